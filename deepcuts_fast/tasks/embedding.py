"""Embedding: a bare encoder (a `<Stem>Model`, or a sentence-transformers model's transformer); what it outputs is
the pooled token states (`scoring.objective.pool`), and it has neither a head nor labels, so `evaluate` has no metric
for it: a slim embedding model is measured against its dense model (`embedding_metrics`)."""
from .base import Task

TASK = Task(name="embedding", suffix="Model", auto_class="AutoModel", outputs=("last_hidden_state",), labels=(),
            head=False, exported=("embedding",), position=3,
            unmeasured="it has no head and no labels to score; measure how well a slim embedding model keeps its "
                       "dense model's embeddings with dc.evaluate_embeddings(slim, dense, batches), or `deepcuts eval "
                       "--model SLIM --baseline DENSE`")
