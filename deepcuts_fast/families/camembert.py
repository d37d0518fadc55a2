"""CamemBERT: RoBERTa's layout and positions (transformers copies its modules)."""
from .base import BERT_LAYOUT, Family

FAMILY = Family(model_type="camembert", class_stem="Camembert", positions_after_padding=True, **BERT_LAYOUT)
