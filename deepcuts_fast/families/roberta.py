"""RoBERTa: BERT's layout; its position ids start after the padding index, and its tokenizer returns no segments."""
from .base import BERT_LAYOUT, Family

FAMILY = Family(model_type="roberta", class_stem="Roberta", positions_after_padding=True, **BERT_LAYOUT)
