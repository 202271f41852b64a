"""edgekit's embeddable runtime: numpy + one backend + tokenizers. Never imports torch or transformers."""

from .predictor import TextClassifier, load
from .session import OrtSession, Session

__all__ = ["load", "TextClassifier", "Session", "OrtSession"]
