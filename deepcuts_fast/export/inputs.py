"""The graph's inputs: the tensors the model's tokenizer returns, seeded batches shaped like them, and the adapter
that feeds them to the model positionally, as the exporter and the check against torch call it."""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import DeepCutsError, first_line
from ..families import find
from ..tasks import Task, model_task

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # what BERT-family tokenizers return


def model_inputs(model: nn.Module, tokenizer=None) -> tuple[str, ...]:
    """The graph's input names: the tensors `tokenizer` returns for a sentence pair (without a tokenizer, those of
    the model family's default tokenizer class in transformers), so its output can be fed as is."""
    names = _tokenizer_outputs(tokenizer) if tokenizer is not None else _default_tokenizer_inputs(model)
    missing = [n for n in ("input_ids", "attention_mask") if n not in names]
    if missing:
        raise DeepCutsError(f"the tokenizer returns no {' or '.join(missing)}; ONNX export needs a tokenizer that "
                            "returns input_ids and attention_mask (pass the model's own tokenizer)")
    return tuple(n for n in INPUT_NAMES if n in names)


def _tokenizer_outputs(tokenizer) -> set[str]:
    """Names of the tensors `tokenizer` returns for a sentence pair."""
    try:
        return set(tokenizer("a", "b"))
    except Exception as e:  # any tokenizer-like object may fail in its own way
        raise DeepCutsError(f"cannot run the tokenizer to find the model's inputs: {first_line(e)}; pass a "
                            "transformers tokenizer") from e


def _default_tokenizer_inputs(model: nn.Module) -> set[str]:
    """What the family's tokenizer returns (its `inputs`); for a model outside the registry, the `model_input_names`
    of the tokenizer class transformers picks for it."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    config = getattr(model, "config", None)
    known = find(config)
    if known is not None:
        return set(known.inputs)
    try:
        found = TOKENIZER_MAPPING[type(config)]
    except (KeyError, TypeError):
        found = None
    classes = found if isinstance(found, tuple) else (found,)
    names = next((c.model_input_names for c in classes if c is not None), None)
    return set(names) if names else {"input_ids", "attention_mask"}


def pads_left(tokenizer) -> bool:
    """Whether `tokenizer` pads on the left (BERT-family tokenizers pad on the right by default)."""
    return getattr(tokenizer, "padding_side", "right") == "left"


def sample_inputs(model: nn.Module, names: Sequence[str], batch: int, seq_len: int, device: torch.device,
                  seed: int = 0, left_padding: bool = False) -> dict[str, torch.Tensor]:
    """A seeded random batch shaped like a tokenizer's output for sentence pairs: padding of varied length on the
    right (or left; the first row full, the last half padding), and token types 0 then 1 where the model has two
    segments."""
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 100))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=g)
    lengths = torch.randint(2, seq_len + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = seq_len, max(2, seq_len // 2)  # one full row, one padded (traced masking path)
    positions = torch.arange(seq_len)[None, :]
    mask = (positions < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, int(getattr(config, "pad_token_id", None) or 0))
    two_segments = int(getattr(config, "type_vocab_size", 2) or 1) > 1
    types = ((positions >= (lengths[:, None] + 1) // 2) & (mask == 1)).long() * int(two_segments)
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if left_padding:  # each row rolled right by its padding, so the padding comes first
        values = {k: torch.stack([row.roll(seq_len - int(n)) for row, n in zip(v, lengths)]) for k, v in values.items()}
    return {n: values[n].to(device) for n in names}


def graph_task(model: nn.Module) -> Task:
    """The task of `model`, whose outputs the graph has (`Task.graph_outputs`), or one clear error for a model
    class of no known task."""
    task = model_task(model)
    if task is None:
        raise DeepCutsError(f"cannot export a {type(model).__name__}: it is a model of no task deepcuts-fast knows; "
                            "load the model with dc.load_model (a task head, or task='embedding')")
    return task


def accepted_inputs(model: nn.Module, names: Iterable[str]) -> tuple[str, ...]:
    """The `names` that `model.forward` takes as named parameters (the rest it would ignore or refuse)."""
    params = inspect.signature(model.forward).parameters
    return tuple(n for n in names if n in params)


class TokenizerInputs(nn.Module):
    """Adapter taking the tokenizer's tensors positionally (in `names` order) and returning the task's outputs as a
    tuple (`Task.graph_outputs`: logits; token logits; start and end logits; an embedding model's pooled, possibly
    normalized, embedding, pooled as its sentence-transformers folder says), as the exporter wants; an input the
    model's forward does not name (DistilBERT's token_type_ids) is accepted and ignored. As a context manager it
    holds the model in eval mode and restores its mode afterwards."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        from ..scoring.objective import sentence_pooling

        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.used = accepted_inputs(model, names)
        self.task = graph_task(model)
        self.pooling = (None if self.task.head else
                        sentence_pooling(getattr(model.config, "_name_or_path", "") or ""))
        self._was_training = model.training

    def __enter__(self) -> "TokenizerInputs":
        return self.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self._was_training)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from ..scoring.objective import pool

        given = dict(zip(self.names, inputs))
        result = self.model(**{n: given[n] for n in self.used})
        if self.pooling is None:
            return tuple(result[name] for name in self.task.outputs)
        mode, normalize = self.pooling
        pooled = pool(result[0], given["attention_mask"], mode)
        return (torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled,)
