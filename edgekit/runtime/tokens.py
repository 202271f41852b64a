"""Token classification (NER) on numpy + one backend: entities with character spans, as the HF pipeline gives.

``TokenClassifier.predict(text)`` returns what ``transformers.pipeline("token-classification",
aggregation_strategy="simple")`` returns: ``[{entity_group, score, word, start, end}, ...]``. Each
non-special token takes its argmax tag; consecutive tokens join one entity while their type stays the
same and the next token is not ``B-``; ``score`` is the mean of the tokens' top probabilities, ``word``
the tokens decoded, ``start``/``end`` character offsets in the text; ``O`` groups are dropped.
"""

from __future__ import annotations

import numpy as np

from .predictor import Predictor, check_texts, softmax


def _tag(name: str) -> tuple[str, str]:
    """``B-PER`` -> (B, PER); ``I-PER`` -> (I, PER); anything else (``O``, ``PER``) -> (I, name), as the pipeline."""
    if name.startswith(("B-", "I-")):
        return name[0], name[2:]
    return "I", name


class TokenClassifier(Predictor):
    """Tags every token of a text and groups them into entities. Safe to share between threads."""

    def token_probs(self, texts: list[str], batch_size: int | None = None) -> list[np.ndarray]:
        """Per text, ``[tokens, labels]`` probabilities of its real tokens (special tokens included)."""
        texts = check_texts(texts)
        size = self._capped(self.batch_size if batch_size is None else batch_size)
        out: list[np.ndarray] = [np.zeros((0, len(self.id2label)), np.float32)] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            rows = [texts[i] for i in idx] + [""] * max(0, self.limits.min_batch - len(idx))
            feeds = self.encoder(rows)
            logits = next(iter(self.session.run(feeds).values()))
            for row, i in enumerate(idx):
                out[i] = softmax(logits[row, :int(feeds["attention_mask"][row].sum())].astype(np.float32))
        return out

    def predict(self, texts: list[str] | str, batch_size: int | None = None) -> list[list[dict]] | list[dict]:
        """Entities per text (a single string gives its list of entities; ``[]`` gives ``[]``)."""
        single = isinstance(texts, str)
        items = check_texts(texts)
        encs = self.encoder.encodings(items)
        out = [self._entities(enc, probs) for enc, probs in zip(encs, self.token_probs(items, batch_size))]
        return out[0] if single else out

    def word_tags(self, words: list[list[str]]) -> list[list[str]]:
        """Per pre-split sentence, the tag of each word: its first sub-token's argmax (the gate's convention).

        A word the tokenizer makes no token of (a zero-width space) is tagged "O": the list kept the later words'
        tags one place early. Words cut off by the maximum length get no tag (the list ends before them).
        """
        if not isinstance(words, (list, tuple)) or not all(
                isinstance(ws, (list, tuple)) and all(isinstance(w, str) for w in ws) for ws in words):
            raise TypeError("word_tags() takes a list of sentences, each a list of words (str); for raw text use "
                            "predict()")  # a string per sentence was tagged one character at a time
        texts = [" ".join(ws) for ws in words]
        encs = self.encoder.encodings(texts)
        result = []
        for ws, enc, probs in zip(words, encs, self.token_probs(texts)):
            spans, start = [], 0
            for w in ws:
                spans.append((start, start + len(w)))
                start += len(w) + 1
            tags: dict[int, str] = {}
            for pos, ((s, e), special) in enumerate(zip(enc.offsets, enc.special_tokens_mask)):
                word = next((i for i, (ws_, we) in enumerate(spans) if e > ws_ and s < we), None)
                if not special and word is not None and word not in tags:
                    tags[word] = self.id2label[int(probs[pos].argmax())]
            cut = len(enc.ids) >= self.encoder.max_length  # the words past the last tagged one were cut off
            end = max(tags, default=-1) + 1 if cut else len(ws)
            result.append([tags.get(i, "O") for i in range(end)])
        return result

    def _entities(self, enc, probs: np.ndarray) -> list[dict]:
        groups: list[list[tuple[int, str, float]]] = []
        for pos, special in enumerate(enc.special_tokens_mask[:len(probs)]):
            if special:
                continue
            label = self.id2label[int(probs[pos].argmax())]
            item = (pos, label, float(probs[pos].max()))
            bi, kind = _tag(label)
            if groups and bi != "B" and _tag(groups[-1][-1][1])[1] == kind:
                groups[-1].append(item)
            else:
                groups.append([item])
        entities = []
        for group in groups:
            kind = _tag(group[0][1])[1]
            if kind == "O":
                continue
            positions = [p for p, _, _ in group]
            entities.append({"entity_group": kind, "score": float(np.mean([s for _, _, s in group])),
                             "word": self.encoder.tokens_text([enc.ids[p] for p in positions]),
                             "start": int(enc.offsets[positions[0]][0]), "end": int(enc.offsets[positions[-1]][1])})
        return entities
