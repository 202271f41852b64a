"""Labeled text datasets in: tsv / csv / jsonl files or a Hugging Face datasets name.

Pure Python (no torch): the CLI, the toolchain and the runtime's tools share it.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, first_line

TEXT_COLUMNS = ("sentence", "text", "content", "review", "document", "sentence1", "question", "premise", "question1")
PAIR_COLUMNS = {"sentence1": "sentence2", "question": "sentence", "premise": "hypothesis", "question1": "question2"}
LABEL_COLUMNS = ("label", "labels", "target", "class", "category", "y")
FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".conll": "conll", ".iob": "conll", ".bio": "conll"}
WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "labels", "tags", "label")


@dataclass
class TextDataset:
    """Texts (and optional second segments and raw labels) from one source."""

    texts: list[str]
    labels: list[str] | None
    source: str
    text_column: str
    label_column: str | None
    pairs: list[str] | None = None
    words: list[list[str]] | None = None     # token-classification: the words of each row (texts = words joined)
    tags: list[list[str]] | None = None      # token-classification: one raw tag (name or id) per word

    def __len__(self) -> int:
        return len(self.texts)

    def __str__(self) -> str:  # manifests and reports record where the rows came from
        return self.source

    def subset(self, n: int | None, seed: int = 0) -> "TextDataset":
        """The first ``n`` rows after a seeded shuffle (None = all, in order)."""
        if n is not None and n < 1:  # order[:0] is empty, order[:-3] drops three rows: neither was asked for
            raise DataError(f"A subset of {n} rows of {self.source or 'the data'} was asked for",
                            "a subset needs at least one row", "Pass --max-samples 1 or more, or omit it for every row")
        if n is None or n >= len(self):
            return self
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        keep = sorted(order[:n])
        pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
        return TextDataset(pick(self.texts), pick(self.labels), self.source, self.text_column,
                           self.label_column, pick(self.pairs), pick(self.words), pick(self.tags))

    def word_spans(self, row: int) -> list[tuple[int, int]]:
        """Character spans of row ``row``'s words in its text (words joined by single spaces)."""
        spans, start = [], 0
        for word in self.words[row]:
            spans.append((start, start + len(word)))
            start += len(word) + 1
        return spans


def load_dataset(
    source: str | Path | TextDataset,
    text_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    split: str = "validation",
) -> TextDataset:
    """Read a labeled text dataset.

    ``source`` is a .tsv/.csv/.jsonl file with a header (jsonl: one object per
    line), or a Hugging Face datasets name such as ``glue/sst2`` (needs the
    ``datasets`` extra and a reachable hub). Columns are auto-detected when
    ``text_column``/``label_column`` are None. ``require_labels=False`` allows
    unlabeled data (benchmarks, calibration). A :class:`TextDataset` is
    returned as it is (read once, handed to every step; its columns travel with it).
    """
    if isinstance(source, TextDataset):
        return source
    rows, columns = _rows(source, split)
    if text_column is None and not any(c in columns for c in TEXT_COLUMNS) and any(c in columns for c in WORD_COLUMNS):
        return _token_rows(rows, columns, str(source), None, label_column, require_labels=False)  # words -> texts
    paired = [first for first, second in PAIR_COLUMNS.items() if first in columns and second in columns]
    # a pair's first column before any single one: QNLI's (question, sentence) was read as its sentences alone
    text_col = _pick_column(columns, text_column, (*paired, *TEXT_COLUMNS), "text", source, "--text-column")
    label_col = None
    if label_column is not None or require_labels:
        label_col = _pick_column(columns, label_column, LABEL_COLUMNS, "label", source, "--label-column")
    elif any(c in columns for c in LABEL_COLUMNS):
        label_col = next(c for c in LABEL_COLUMNS if c in columns)
    if label_col is not None and label_col == text_col:  # the model was fed its own labels (accuracy 1.0000)
        raise DataError(f"Dataset '{source}': column '{text_col}' is taken as both the text and the label",
                        "a model would be scored on reading its answers", "Pass --text-column and --label-column "
                        "naming two different columns")
    pair_col = PAIR_COLUMNS.get(text_col) if PAIR_COLUMNS.get(text_col) in columns else None
    texts, labels, pairs = [], [] if label_col else None, [] if pair_col else None
    for i, row in enumerate(rows):
        text = row.get(text_col)
        if text is None or (isinstance(text, str) and not text.strip()):
            raise DataError(f"Dataset '{source}' row {i + 1} has no text in column '{text_col}'",
                            None, "Remove the empty row or choose another --text-column")
        texts.append(str(text))
        if label_col:
            label = row.get(label_col)
            if label is None or str(label).strip() == "":
                raise DataError(f"Dataset '{source}' row {i + 1} has no label in column '{label_col}'",
                                None, "Remove the row or choose another --label-column")
            labels.append(str(label).strip())
        if pair_col:
            pairs.append(str(row.get(pair_col) or ""))
    return TextDataset(texts, labels, str(source), text_col, label_col, pairs)


def _rows(source: str | Path, split: str) -> tuple[list[dict], list[str]]:
    path = Path(source)
    if path.exists():
        rows, columns = _read_file(path)
    elif path.is_symlink():  # dangling, or a loop
        raise DataError(f"Dataset '{source}' not found", "it is a symbolic link to nothing readable",
                        "Point --data at the file itself")
    elif _looks_like_hub_name(str(source)):
        from .deps import available

        if not available("datasets"):  # most often a local file given without its suffix, or mistyped
            raise DataError(f"Dataset '{source}' not found", "no such file; read as a Hugging Face datasets name it "
                            "needs the datasets package, which is not installed",
                            "Pass a .tsv/.csv/.jsonl/.conll file, or pip install datasets to load it from the hub")
        rows, columns = _read_hub(str(source), split)
    else:
        raise DataError(f"Dataset '{source}' not found", "no such file",
                        "Pass a .tsv/.csv/.jsonl/.conll file, or a Hugging Face datasets name")
    if not rows:
        raise DataError(f"Dataset '{source}' is empty", "it has a header but no rows", "Pass a file with at least one row")
    return rows, columns


def load_token_dataset(source: str | Path, text_column: str | None = None, label_column: str | None = None,
                       require_labels: bool = True, split: str = "validation") -> TextDataset:
    """Read a token-classification dataset: words and one tag per word.

    jsonl rows with a list of words (``tokens``/``words``, or ``text_column``)
    and a list of tags (``ner_tags``/``labels``/``tags``, or ``label_column``;
    tag names such as ``B-PER`` or the model's tag ids), or a CoNLL file
    (``.conll``/``.iob``/``.bio``: one ``word ... tag`` line per word, a
    blank line between sentences, ``-DOCSTART-`` lines skipped). ``texts``
    are the words joined by single spaces.
    """
    rows, columns = _rows(source, split)
    return _token_rows(rows, columns, str(source), text_column, label_column, require_labels)


def _token_rows(rows, columns, source, text_column, label_column, require_labels) -> TextDataset:
    word_col = _pick_column(columns, text_column, WORD_COLUMNS, "words", source, "--text-column")
    tag_col = None
    if label_column is not None or require_labels:
        tag_col = _pick_column(columns, label_column, TAG_COLUMNS, "tags", source, "--label-column")
    words, tags = [], [] if tag_col else None
    for i, row in enumerate(rows):
        ws = row.get(word_col)
        if not isinstance(ws, list) or not ws or not all(isinstance(w, str) and w.strip() for w in ws):
            raise DataError(f"Dataset '{source}' row {i + 1}: '{word_col}' is not a non-empty list of words",
                            None, "Write each row's words as a JSON list of strings")
        words.append([w.strip() for w in ws])
        if tag_col:
            ts = row.get(tag_col)
            if not isinstance(ts, list) or len(ts) != len(ws):
                raise DataError(f"Dataset '{source}' row {i + 1} has {len(ws)} words but "
                                f"{len(ts) if isinstance(ts, list) else 'no list of'} tags in '{tag_col}'",
                                None, "Give exactly one tag per word")
            tags.append([str(t).strip() for t in ts])
    texts = [" ".join(ws) for ws in words]
    return TextDataset(texts, None, source, word_col, tag_col, None, words, tags)


def encode_tags(tags: list[list[str]], label2id: dict[str, int], source: str = "data") -> list[list[int]]:
    """Map per-word tag names (or ids) to the model's tag ids, row by row."""
    flat = encode_labels([t for row in tags for t in row], label2id, source)
    out, start = [], 0
    for row in tags:
        out.append(flat[start:start + len(row)])
        start += len(row)
    return out


def encode_labels(labels: list[str], label2id: dict[str, int], source: str = "data",
                  reading_of: list[str] | None = None) -> list[int]:
    """Map raw labels (names like 'positive' or ids like '1') to the model's class ids.

    Decided for the whole file: names when every label is one of the model's names (as a fine-tuned model's
    labels are, taken from its training data), else ids when every label is one of its ids, else each label on
    its own (names first). Label by label, a model named with numbers ("1", "2" for ids 0, 1) read a file of
    ids 0/1 as id 0 for "0" and as name "1" = id 0 for "1". ``reading_of``: the labels whose reading decides
    (the whole file, when ``labels`` are a sample of it), default ``labels``.
    """
    id_strings = {str(i): i for i in label2id.values()}
    lowered = {k.lower(): v for k, v in label2id.items()}
    distinct = set(labels) | set(reading_of or ())
    names = {x: label2id.get(x, lowered.get(x.lower())) for x in distinct}
    ids = {x: id_strings.get(_as_int(x)) for x in distinct}
    if None not in names.values():
        pick = names
    elif None not in ids.values():
        pick = ids
    else:
        pick = {x: names[x] if names[x] is not None else ids[x] for x in distinct}
    out, unknown = [], set()
    for label in labels:
        if pick[label] is None:
            unknown.add(label)
        else:
            out.append(pick[label])
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in sorted(label2id.items(), key=lambda kv: kv[1]))
        shown = ", ".join(repr(u) for u in sorted(unknown)[:5])
        raise DataError(f"Labels in '{source}' are unknown to the model: {shown}",
                        f"the model knows {known}",
                        "Map the labels to the model's names or ids, or pass --label-column for the right column")
    return out


def label_names(labels: list[str], source: str = "data") -> list[str]:
    """The sorted distinct labels of a training set (numeric order when all are integers, '1.0' included).

    Two spellings of one label ('Positive' and 'positive', '1' and '1.0') are refused: they became two classes of
    the trained model, while ``encode_labels`` (check, the gate) reads them as one.
    """
    distinct = set(labels)
    numeric = all(_as_int(x) is not None for x in distinct)
    spellings: dict[str, list[str]] = {}
    for x in sorted(distinct):
        spellings.setdefault(_as_int(x) if numeric else x.lower(), []).append(x)
    twice = next((v for v in spellings.values() if len(v) > 1), None)
    if twice:
        raise DataError(f"Labels {' and '.join(repr(v) for v in twice[:3])} in '{source}' are one label written "
                        "two ways", "training would make them two classes, which check and the runtime read as one",
                        "Write each label one way throughout the file")
    if numeric:
        return sorted(distinct, key=lambda x: int(_as_int(x)))
    return sorted(distinct)


def _as_int(label: str) -> str | None:
    try:
        return str(int(float(label))) if float(label) == int(float(label)) else None
    except (ValueError, OverflowError):
        return None


def _read_file(path: Path) -> tuple[list[dict], list[str]]:
    if path.is_dir():
        raise DataError(f"Dataset '{path}' is a directory", "a single .tsv, .csv or .jsonl file is expected",
                        "Pass the file inside it")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"Dataset '{path}' has an unsupported format '{path.suffix}'",
                        f"supported: {', '.join(sorted(FORMATS))}", "Convert it to tsv, csv or jsonl with a header")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"Dataset '{path}' is not valid UTF-8", f"byte {exc.start} cannot be decoded",
                        "Re-encode the file as UTF-8") from None
    except OSError as exc:
        raise DataError(f"Dataset '{path}' cannot be read", exc.strerror, "Check the path and its permissions") from None
    if not text.strip():
        raise DataError(f"Dataset '{path}' is empty", "the file has no header and no rows",
                        "Pass a file with a header line and at least one row")
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    if fmt == "conll":
        return _read_conll(text)
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    # lines end at \n, \r\n or \r only: str.splitlines also split a text at U+2028 or U+0085 (one row read as
    # two) and a quoted CSV field at its own line break (its lines joined without one)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    rows = []
    try:
        header = [h.strip() for h in next(reader)]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:  # zip() into a dict kept the last column of a name: scored against the wrong labels
            raise DataError(f"Dataset '{path}' names column {', '.join(repr(h) for h in repeated)} more than once",
                            "a row would be read from only one of them", "Give every column of the header its own name")
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise DataError(f"Dataset '{path}' line {reader.line_num} has {len(values)} fields, the header has "
                                f"{len(header)}", None, f"Fix the line or check that the file is {fmt}")
            rows.append(dict(zip(header, values)))
    except csv.Error as exc:  # strict: an unterminated quote no longer swallows every row after it
        raise DataError(f"Dataset '{path}' line {reader.line_num} is not valid {fmt}", str(exc),
                        "Close the quote (a quote inside a field is written twice: \"\")") from None
    return rows, header


def _read_jsonl(path: Path, text: str) -> tuple[list[dict], list[str]]:
    rows, columns = [], {}
    for i, line in enumerate(text.split("\n")):  # JSON escapes its line breaks; U+2028 may stand in a string
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"Dataset '{path}' line {i + 1} is not JSON", exc.msg, "Write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"Dataset '{path}' line {i + 1} is not a JSON object", None, "Write one JSON object per line")
        rows.append(obj)
        columns.update(dict.fromkeys(obj))
    return rows, list(columns)


def _read_conll(text: str) -> tuple[list[dict], list[str]]:
    """CoNLL columns: the first is the word, the last the tag; blank lines end sentences."""
    rows, words, tags = [], [], []
    for line in text.split("\n") + [""]:
        fields = line.split()
        if fields and not fields[0].startswith("-DOCSTART-"):
            words.append(fields[0])
            tags.append(fields[-1] if len(fields) > 1 else "O")
        elif not fields and words:
            rows.append({"tokens": words, "ner_tags": tags})
            words, tags = [], []
    return rows, ["tokens", "ner_tags"]


def _looks_like_hub_name(name: str) -> bool:
    """'sst2', 'glue/sst2', 'stanfordnlp/sst2' are hub names; 'data/x.tsv' and './x' are paths."""
    if Path(name).suffix.lower() in FORMATS or name.startswith((".", "/", "~")):
        return False
    return name.count("/") <= 1 and bool(name.strip())


def _read_hub(name: str, split: str) -> tuple[list[dict], list[str]]:
    from .deps import require

    datasets = require("datasets")
    repo, _, config = name.partition(":") if ":" in name else (name, "", None)
    if config is None and name.count("/") == 1 and name.split("/")[0] in ("glue", "super_glue"):
        repo, config = name.split("/")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:  # the hub raises many types; all mean "could not get it"
        raise DataError(f"Dataset '{name}' could not be loaded from the Hugging Face hub",
                        first_line(exc, typed=True),
                        "Check the name and network, or pass a local .tsv/.csv/.jsonl file") from None
    if "label" in ds.features and hasattr(ds.features["label"], "names"):
        names = ds.features["label"].names
        ds = ds.map(lambda row: {"label": names[row["label"]] if row["label"] >= 0 else ""})
    return [dict(r) for r in ds], list(ds.column_names)


def _pick_column(columns, wanted, candidates, kind, source, flag) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"Dataset '{source}' has no {kind} column '{wanted}'",
                            f"its columns are: {', '.join(columns)}", f"Pass {flag} with one of them")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"Dataset '{source}' has no {kind} column",
                    f"none of {', '.join(candidates)} is among its columns ({', '.join(map(str, columns))})",
                    f"Pass {flag} naming the {kind} column")
