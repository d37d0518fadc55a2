"""Embedding: a bare encoder (a `<Stem>Model`, or a sentence-transformers model's transformer); what it outputs is
the pooled token states (`scoring.objective.pool`), and it has neither a head nor labels."""
from .base import Task

TASK = Task(name="embedding", suffix="Model", auto_class="AutoModel", outputs=("last_hidden_state",), labels=(),
            head=False, exported=("embedding",), position=3)
