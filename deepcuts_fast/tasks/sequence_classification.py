"""Sequence classification: one row of logits per example (one output: a regression head, MSE)."""
from .base import Task

TASK = Task(name="sequence-classification", suffix="ForSequenceClassification",
            auto_class="AutoModelForSequenceClassification", outputs=("logits",), labels=("labels",),
            num_labels=True, position=0)
