"""BERT."""
from .base import BERT_LAYOUT, Family

FAMILY = Family(model_type="bert", class_stem="Bert", inputs=("input_ids", "attention_mask", "token_type_ids"),
                **BERT_LAYOUT)
