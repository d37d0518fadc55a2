"""The on-disk cache of fine-tuned models.

A model without a task head is fine-tuned before it can be scored; this cache makes that a
one-time cost. Fine-tuning is seeded (see `train.finetune`), so a cached entry and a fresh run
with the same key are the same model.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ._version import __version__
from .cache import cache_dir
from .errors import DeepCutsError
from .hashing import cache_key, canonical_json, files_fingerprint
from .models import TOKENIZER_FILES, WEIGHTS_FILE, load_model, resolve_model_path
from .outputs import write_folder
from .precision import choose
from .train import Batch, TrainSettings, finetune, num_steps

METADATA_FILE = "deepcuts_finetune.json"
# Besides its *.safetensors weights, the files of a base model folder whose contents the cache key covers.
MODEL_FILES = ("config.json", "model.safetensors.index.json", *TOKENIZER_FILES)


class FineTuned(NamedTuple):
    """A fine-tuned model, whether it came from the cache, and its cache entry's metadata
    (`precision`: the dtype training ran in and why; `seconds`: how long it took)."""

    model: nn.Module
    cached: bool
    metadata: dict


def finetuned_model(
    model_name: str,
    tokenizer: Any,
    make_batches: Callable[[Any], Sequence[Batch]],
    *,
    num_labels: int = 2,
    label_names: Sequence[str] | None = None,
    key_fields: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    settings: TrainSettings = TrainSettings(),
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FineTuned:
    """`model_name` fine-tuned on `make_batches(tokenizer)`, from the cache when possible.

    The cache key covers the base model (a local folder, or the `minilm` alias, by the contents of its
    weights, config and tokenizer files, so a model changed in place is fine-tuned afresh; a hub name as
    given), `num_labels`, every training setting of `settings` (the precision as resolved on this machine,
    so an fp32 and a bf16 fine-tune are different entries) and `key_fields`, which must describe the
    training data by content (a hash of its texts and labels, split, max length, batch size, ...), since
    `make_batches` is only called on a miss. `provenance` (e.g. the data's name) and `model_name` are
    recorded in the metadata only. `label_names` (class id i is `label_names[i]`;
    None for numeric labels) are part of the key too, are written into the model's `config.id2label` /
    `label2id`, so later loads map class names through them, and are recorded in the metadata
    (`label2id`). An entry lives in
    `cache_dir()/finetuned/<key>/` as an ordinary model folder (safetensors weights, tokenizer,
    `deepcuts_finetune.json`), written atomically; an incomplete one is rebuilt.
    """
    precision = choose("train", device or "cpu", settings.dtype)
    train_settings = asdict(replace(settings, dtype=precision.name))
    fields = dict(model=_model_id(model_name), num_labels=num_labels, train=train_settings, data=dict(key_fields or {}))
    if label_names is not None:  # only then, so entries of numerically labelled data keep their keys
        fields["labels"] = list(label_names)
    key = cache_key(**fields)
    entry = cache_dir() / "finetuned" / key
    if _is_complete(entry, key):
        meta = json.loads((entry / METADATA_FILE).read_text(encoding="utf-8"))
        return FineTuned(load_model(str(entry), num_labels=num_labels).to(device), True, meta)

    model = load_model(model_name, num_labels=num_labels, seed=settings.seed).to(device)
    if label_names is not None:
        name_labels(model.config, label_names)
    batches = make_batches(tokenizer)
    start = time.perf_counter()
    finetune(model, batches, progress=progress, **train_settings)
    metadata = {
        "key": key,
        "fields": json.loads(canonical_json(fields)),
        "precision": precision.to_dict(),
        "train_batches": len(batches),
        "steps": num_steps(len(batches), settings.epochs),
        "seconds": round(time.perf_counter() - start, 3),
        "versions": _versions(),
        "provenance": {"model": model_name, **dict(provenance or {})},
    }
    if label_names is not None:
        metadata["label2id"] = dict(model.config.label2id)
    _write_entry(entry, model, tokenizer, metadata)
    return FineTuned(model, False, metadata)


def name_labels(config: Any, label_names: Sequence[str]) -> None:
    """Name the head's classes in `config` (id i is `label_names[i]`; extra outputs keep `LABEL_<i>`), so
    whoever loads the model maps class names to the ids it was trained with."""
    names = list(label_names)
    if len(names) > config.num_labels or len(set(names)) != len(names):
        raise DeepCutsError(f"cannot name a head of {config.num_labels} classes with the labels {names}; pass "
                            "distinct names, at most one per class")
    id2label = {i: names[i] if i < len(names) else f"LABEL_{i}" for i in range(config.num_labels)}
    config.id2label = id2label
    config.label2id = {name: i for i, name in id2label.items()}


def _model_id(model_name: str) -> str:
    """How a base model is named in a cache key: a local folder (the `minilm` alias too) by a hash of its
    weights, config and tokenizer files, independent of where it lies; a hub name as given."""
    folder = Path(resolve_model_path(model_name))
    if not folder.is_dir():
        return model_name
    names = [p.name for p in folder.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name in MODEL_FILES)]
    return "content:" + files_fingerprint(folder, names)


def _is_complete(entry: Path, key: str) -> bool:
    """Whether `entry` holds weights and a readable metadata file for `key` (else it is rebuilt)."""
    try:
        meta = json.loads((entry / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (entry / WEIGHTS_FILE).is_file() and meta.get("key") == key


def _versions() -> dict[str, str | None]:
    """Versions of the libraries that produced a cache entry, for provenance."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"deepcuts-fast": __version__}
    for name in ("torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _write_entry(entry: Path, model: nn.Module, tokenizer: Any, metadata: dict[str, Any]) -> None:
    """Save model, tokenizer and metadata as the cache entry `entry`, atomically. An incomplete entry
    is replaced; a complete one that another process published meanwhile is kept (the same model)."""
    key = metadata["key"]
    with write_folder(entry, kind="fine-tune cache", overwrite=True, name="fine-tune cache entry",
                      keep_existing=lambda existing: _is_complete(existing, key)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
