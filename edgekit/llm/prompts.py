"""Prompt templates that turn a labeled text-classification row into a question for a causal LM.

The answer is parsed from the generated text: the first word that names a label (case-insensitive, punctuation
stripped) within the first 10 words ("The sentiment of this review is negative." counts as negative). SST-2's labels 0/1 are the words "negative"/"positive".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: SST-2 label ids -> answer words
SST2_WORDS = {0: "negative", 1: "positive"}

#: The templates tried on SST-2 dev (first 100 rows, original model, greedy); results in bench/llm.md.
TEMPLATES = {
    "oneword": "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {text}",
    "classify": "Classify the sentiment of the following movie review as positive or negative.\n\n"
                "Review: {text}\n\nAnswer with one word: positive or negative.",
    "review_first": "Review: {text}\n\nIs this review positive or negative?",
}
DEFAULT_TEMPLATE = "oneword"


@dataclass(frozen=True)
class PromptTemplate:
    """A user message with ``{text}`` (no other placeholder), sent through the chat template; ``words`` maps
    label ids to answers."""

    text: str
    words: dict

    def messages(self, review: str) -> list[dict]:
        return [{"role": "user", "content": self.question(review)}]

    def question(self, review: str) -> str:
        """The user message for ``review`` (before the chat template): each ``{text}`` replaced by it, every other
        brace kept as written (a template may hold JSON or a literal ``{label}``)."""
        return self.text.replace("{text}", review.strip())

    def parse(self, answer: str) -> int | None:
        """The label whose word appears first among the first 10 words of ``answer`` (None: no label named)."""
        lookup = {w.lower(): label for label, w in self.words.items()}
        for word in re.findall(r"[a-zA-Z]+", answer.lower())[:10]:
            if word in lookup:
                return lookup[word]
        return None


def template(name_or_text: str = DEFAULT_TEMPLATE, words: dict | None = None) -> PromptTemplate:
    """A named template from :data:`TEMPLATES`, or a custom text holding ``{text}``."""
    text = TEMPLATES.get(name_or_text, name_or_text)
    if "{text}" not in text:
        from ..errors import InputError  # noqa: PLC0415

        raise InputError(f"Prompt template '{name_or_text}' is not usable",
                         "it is neither a known name nor a text containing {text}",
                         f"Use one of {', '.join(TEMPLATES)} or a text with {{text}}")
    return PromptTemplate(text, dict(words or SST2_WORDS))
