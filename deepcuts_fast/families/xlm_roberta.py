"""XLM-RoBERTa: RoBERTa's layout and positions (transformers copies its modules)."""
from .base import BERT_LAYOUT, Family

FAMILY = Family(model_type="xlm-roberta", class_stem="XLMRoberta", positions_after_padding=True, **BERT_LAYOUT)
