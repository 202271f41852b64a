"""edgekit's embeddable runtime: numpy + one backend + tokenizers. Never imports torch or transformers.

``load(artifact)`` gives a :class:`TextClassifier` (``predict``, ``predict_proba``, ``run``), safe to share
between threads; :class:`DynamicBatcher` merges concurrent requests into shared batches.
"""

from .batcher import DynamicBatcher
from .predictor import ShapeLimits, TextClassifier, engine_limits, load
from .session import OrtSession, Session

__all__ = ["load", "TextClassifier", "DynamicBatcher", "ShapeLimits", "engine_limits", "Session", "OrtSession"]
