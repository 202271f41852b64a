"""edgekit's embeddable runtime: numpy + one backend + tokenizers. Never imports torch or transformers.

``load(artifact)`` gives the predictor of the artifact's task: a :class:`TextClassifier` (``predict``,
``predict_proba``, ``run``) or a :class:`TokenClassifier` (``predict`` -> entities with spans), safe to share
between threads; :class:`DynamicBatcher` merges concurrent requests into shared batches.
"""

from .batcher import DynamicBatcher
from .predictor import ShapeLimits, TextClassifier, engine_limits, load
from .session import OrtSession, Session
from .tokens import TokenClassifier

__all__ = ["load", "TextClassifier", "TokenClassifier", "DynamicBatcher", "ShapeLimits", "engine_limits", "Session", "OrtSession"]
