"""Token classification (NER, POS): logits per token; labels (batch, tokens), -100 where a token has none."""
from .base import Task

TASK = Task(name="token-classification", suffix="ForTokenClassification",
            auto_class="AutoModelForTokenClassification", outputs=("logits",), labels=("labels",), per_token=True,
            token_axis=True, num_labels=True, position=1)
