"""deepcuts-fast: interpretability-based (DeepCuts) pruning scores for BERT-family encoders."""
__version__ = "0.1.0"

from .errors import DeepCutsError
from .models import load_model, load_tokenizer
from .scoring import CRITERIA, Scores, apply_masks, score, score_many

__all__ = [
    "CRITERIA",
    "DeepCutsError",
    "Scores",
    "__version__",
    "apply_masks",
    "load_model",
    "load_tokenizer",
    "score",
    "score_many",
]
