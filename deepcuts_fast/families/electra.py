"""ELECTRA (the discriminator): BERT's layout; released discriminators embed at the hidden size."""
from .base import BERT_LAYOUT, Family

FAMILY = Family(model_type="electra", class_stem="Electra", inputs=("input_ids", "attention_mask", "token_type_ids"),
                **BERT_LAYOUT)
