"""The embedded default task: packaged MiniLM-L6 fine-tuned on the packaged Rotten Tomatoes data.

Fine-tuned once (AdamW, lr 1e-4 decaying linearly over one epoch, batch 32, bf16 autocast on CPU,
seed 0) and cached, so later runs start in seconds.
"""
from __future__ import annotations

import torch
from torch import nn

from .data import EMBEDDED, load_dataset, make_batches
from .models import load_tokenizer
from .train import finetuned_model

TASK_MODEL_ALIAS = "minilm-rt"
FINETUNE = dict(epochs=1.0, lr=1e-4, batch_size=32, max_length=64, seed=0)


def embedded_task_model(progress: bool = True) -> tuple[nn.Module, object, bool]:
    """(fine-tuned MiniLM classifier, its tokenizer, whether it came from the cache)."""
    tokenizer = load_tokenizer("minilm")
    settings = dict(FINETUNE)
    batch_size, max_length = settings.pop("batch_size"), settings.pop("max_length")

    def train_batches(tok):
        data = load_dataset(EMBEDDED, "train")
        return make_batches(data, tok, batch_size=batch_size, max_length=max_length, shuffle=True, seed=0)

    model, cached = finetuned_model(
        "minilm", tokenizer, train_batches, num_labels=2,
        key_fields={"data": EMBEDDED, "split": "train", "batch_size": batch_size, "max_length": max_length},
        autocast_dtype=torch.bfloat16, progress=progress, **settings,
    )
    return model, tokenizer, cached
