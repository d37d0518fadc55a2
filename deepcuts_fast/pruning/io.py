"""Save, load and `torch.export` slim models (safetensors only; every write is atomic; ONNX: the `export` package).

A slim directory is an ordinary HF model folder (`config.json`, `model.safetensors`, tokenizer
files) whose config also records the per-layer widths (`deepcuts_heads`, `deepcuts_ffn`), plus
`deepcuts_plan.json`. Stock transformers classes have one width for all layers, so the folder also carries
`modeling_deepcuts_slim.py` (see `remote_code.py`), which `AutoModel*.from_pretrained(..., trust_remote_code=True)`
runs; `dc.from_pretrained` rebuilds the slim shapes itself, then loads the weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import DeepCutsError, first_line
from ..models import (TOKENIZER_FILES, WEIGHTS_FILE, check_finite_weights, check_weights_file, load_model,
                      load_tokenizer, max_positions, model_device, resolve_model_path, weight_problems)
from ..outputs import write_file, write_folder
from ..planning.plan import Plan
from ..tasks import SEQUENCE, saved_task, task_named, task_of_head
from .remote_code import add_remote_code
from .sentence_folder import copy_sentence_files, sentence_source
from ..families.narrowing import shrink

PLAN_FILE = "deepcuts_plan.json"
MODEL_FOLDER_KIND = "model"  # the manifest kind of a folder save_pretrained writes


def save_pretrained(model: nn.Module, path: str | os.PathLike, tokenizer=None, plan: Plan | None = None,
                    overwrite: bool = False) -> Path:
    """Write `model` (dense or slim) with its tokenizer and plan to folder `path`, atomically. An earlier model
    folder written here is replaced only with `overwrite` (only its own files: others beside them stay); a
    folder deepcuts did not write, and the folder the model was loaded from, are refused. A slim model gets its
    modeling code too, so that stock transformers loads the folder (trust_remote_code=True) where deepcuts-fast
    is not installed. An embedding model loaded from a sentence-transformers folder keeps its modules.json,
    pooling, normalization and settings files (and that folder's tokenizer when none is given), so
    `SentenceTransformer(path, trust_remote_code=True)` loads it."""
    target = Path(path)
    with write_folder(target, kind=MODEL_FOLDER_KIND, overwrite=overwrite, inputs=model_source(model),
                      name="the model folder") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        add_remote_code(tmp)  # a slim folder also loads in stock transformers with trust_remote_code=True
        sentence = sentence_source(model)
        if tokenizer is None and sentence is not None:  # sentence-transformers reads the tokenizer beside the model
            tokenizer = load_tokenizer(str(sentence))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if sentence is not None:
            copy_sentence_files(sentence, tmp)
        if plan is not None:
            (tmp / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1), encoding="utf-8")
        _usual_permissions(tmp)
    return target


def _usual_permissions(folder: Path) -> None:
    """Give everything under `folder` the modes open() / mkdir would under the umask (0644 / 0755 usually), since
    transformers writes the weights through a private (0600) temporary file."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, 0o777), (files, 0o666)):
            for name in names:
                if not os.path.islink(os.path.join(root, name)):  # never change what a link points to
                    os.chmod(os.path.join(root, name), mode & ~umask)


def model_source(model: nn.Module) -> dict[str, str | None]:
    """The folder `model` (or the dense model it was cut from) was loaded from, as an input no output may
    replace: saving a slim copy over it would destroy the only copy of the dense weights."""
    return {"model source": getattr(getattr(model, "config", None), "_name_or_path", None) or None}


def from_pretrained(path: str | os.PathLike, attn_implementation: str | None = None, *,
                    dtype: torch.dtype | str | None = None, device_map: str | int | torch.device | None = None,
                    revision: str | None = None) -> nn.Module:
    """Any model in eval mode, of the task it was saved for: a slim folder written by `save_pretrained` is rebuilt
    exactly with its per-layer widths and its head (or none: an embedding model); dense folders and the `minilm`
    alias go through `load_model` (keeping a saved head of any task; a bare encoder gets a classifier head). A hub
    name (at `revision`) is read through the HF cache, downloading its config, safetensors and tokenizer files
    unless offline. `dtype` casts the loaded model ("auto": the dtype its config records;
    None: as loaded, float32 for a slim folder) and `device_map` puts it on one device ("cpu", "cuda", "cuda:1",
    "auto": CUDA when there is one)."""
    cast, device = _check_dtype(dtype), _check_device(device_map)
    model = _load_folder(_model_folder(path, revision), attn_implementation)
    if cast == "auto":
        cast = _config_dtype(model.config)
    return model.to(device=device, dtype=cast) if cast is not None or device is not None else model


def _load_folder(folder: Path, attn_implementation: str | None) -> nn.Module:
    """The model in a local folder: slim (per-layer widths in its config) rebuilt here, dense via `load_model`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    import transformers
    from transformers import AutoConfig

    for name in ("config.json", WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise DeepCutsError(f"{folder} is not a complete model folder: {name} is missing")
    check_weights_file(folder / WEIGHTS_FILE)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"{folder}/config.json is unreadable: {first_line(e)}") from e
    heads, ffn = getattr(config, "deepcuts_heads", None), getattr(config, "deepcuts_ffn", None)
    if heads is None or ffn is None:  # an ordinary (dense) model folder
        return load_model(str(folder), attn_implementation=attn_implementation)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    # The task it was saved for; trust_remote_code=False: the stock class, shrunk below (the folder's own modeling
    # file is for other users)
    auto = getattr(transformers, (saved_task(config, str(folder)) or task_named(SEQUENCE)).auto_class)
    model = auto.from_config(config, trust_remote_code=False)
    shrink(model, [range(h) for h in heads], [range(f) for f in ffn])
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise DeepCutsError(f"{folder}/{WEIGHTS_FILE} is corrupt or partial ({e})") from e
    missing, unexpected, wrong = _compare(model, state)
    problems = weight_problems(missing=missing, unexpected=unexpected, mismatched=wrong)
    if problems:
        raise DeepCutsError(f"slim folder {folder} does not match its config: its weights have {problems}; the "
                            "folder is corrupt or was not written by deepcuts: save the pruned model again")
    model.load_state_dict(state, strict=False)
    check_finite_weights(model, str(folder))
    model.tie_weights()
    return model.eval()


HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", PLAN_FILE, *TOKENIZER_FILES]
"""What `from_pretrained` fetches of a hub repository: never pickled weights (*.bin, *.pt) nor code."""
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _model_folder(path: str | os.PathLike, revision: str | None) -> Path:
    """The local folder of `path`: itself (or the `minilm` alias's folder), or a hub name's cached snapshot."""
    name = resolve_model_path(str(path))
    if os.path.isdir(name):
        if revision is not None:
            raise DeepCutsError(f"revision={revision!r} selects a version of a hub model, but {path} is a local "
                                "folder; drop revision, or pass the hub name")
        return Path(name)
    if os.path.lexists(name):
        raise DeepCutsError(f"{path} is a file, not a model folder; pass the folder that holds config.json")
    if _looks_like_path(name):
        raise DeepCutsError(f"model folder {path} does not exist; pass an existing folder or a hub name (org/model)")
    return _hub_snapshot(name, revision)


def _looks_like_path(name: str) -> bool:
    """Whether a name that is no existing file is meant as a local path (a hub name is `model` or `org/model`)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _hub_snapshot(name: str, revision: str | None) -> Path:
    """The cached snapshot folder of hub model `name`: downloaded (config, safetensors, tokenizer) unless the hub
    is offline, and read from the local HF cache when offline or when the hub cannot be reached."""
    if _hub_offline():
        return _snapshot(name, revision, local_files_only=True)
    try:
        return _snapshot(name, revision, local_files_only=False)
    except DeepCutsError as online:
        try:
            return _snapshot(name, revision, local_files_only=True)
        except DeepCutsError:
            raise online from None


def _snapshot(name: str, revision: str | None, local_files_only: bool) -> Path:
    """One `snapshot_download` of the files `from_pretrained` reads, its failure as a DeepCutsError."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=HUB_FILES,
                                      local_files_only=local_files_only))
    except (OSError, ValueError) as e:
        at = f" at revision {revision!r}" if revision else ""
        if local_files_only:
            raise DeepCutsError(f"model {name!r}{at} is not a local folder and not in the local Hugging Face cache"
                                f"{' (the hub is offline: HF_HUB_OFFLINE=1)' if _hub_offline() else ''}; pass a model "
                                "folder, or download it first with network access") from e
        raise DeepCutsError(f"cannot download model {name!r}{at} from the Hugging Face hub: {first_line(e)}; check "
                            "the name, the revision and your access token, or pass a local folder") from e


def _hub_offline() -> bool:
    """Whether the hub is off limits (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, now or when huggingface_hub loaded)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _check_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """`dtype` as a torch float dtype, "auto" or None, or an error listing the names taken."""
    if dtype is None or dtype == "auto" or dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise DeepCutsError(f"dtype {dtype!r} is not a model dtype; pass torch.float32, torch.float16, torch.bfloat16, "
                        f"one of {', '.join(DTYPES)}, 'auto' (the dtype saved in config.json) or None")


def _config_dtype(config) -> torch.dtype | None:
    """The dtype recorded in a loaded config (`dtype`, older `torch_dtype`), when it is one `from_pretrained` takes."""
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    try:
        return _check_dtype(str(saved)) if saved is not None else None
    except DeepCutsError:
        return None


def _check_device(device_map: str | int | torch.device | None) -> torch.device | None:
    """The one device `device_map` names ("auto": CUDA when there is one), checked to exist before any loading."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        raise DeepCutsError("device_map takes one device here (\"cpu\", \"cuda\", \"cuda:1\", \"auto\"); for a model "
                            "split over devices load the folder with transformers (trust_remote_code=True, see "
                            "docs/deploy.md)")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int) and not isinstance(device_map, bool):  # a GPU index, as transformers takes it
        device_map = f"cuda:{device_map}"
    try:
        device = torch.device(device_map)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeepCutsError(f"device_map {device_map!r} is not a device; pass \"cpu\", \"cuda\", \"cuda:1\", \"auto\" "
                            "or None") from e
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise DeepCutsError(f"device_map {device_map!r} names a CUDA device, but this machine has {found}; pass "
                            "device_map=\"cpu\" (or \"auto\")")
    return device


def _compare(model: nn.Module, state: dict) -> tuple[list, list, list]:
    """The missing, unexpected and wrong-shape weights of `state` for `model` (tied copies may be absent)."""
    expected = model.state_dict()
    tied = {n for n in expected if n not in state and _is_tied(model, n)}
    missing = sorted(n for n in expected if n not in state and n not in tied)
    unexpected = sorted(n for n in state if n not in expected)
    wrong = [f"{n} (saved {tuple(state[n].shape)}, model {tuple(t.shape)})"
             for n, t in sorted(expected.items()) if n in state and tuple(state[n].shape) != tuple(t.shape)]
    return missing, unexpected, wrong


def _is_tied(model: nn.Module, name: str) -> bool:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return name in keys


def export_program(model: nn.Module, path: str | os.PathLike, seq_len: int = 16, *, overwrite: bool = False) -> Path:
    """Write a `torch.export` program (.pt2) with dynamic batch and sequence (an existing file only with
    `overwrite`), taking (input_ids, attention_mask) and returning the task's outputs (`tasks`: the logits, a
    token-classification model's token logits, a QA model's (start_logits, end_logits), an embedding model's
    last_hidden_state)."""
    target = Path(path)
    longest = int(max_positions(model.config) or 512)  # the family's: some start positions after the padding
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=2, max=longest)
    with _TaskOutputs(model) as wrapped:
        program = torch.export.export(wrapped, _example_inputs(seq_len, model_device(model)),
                                      dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    with write_file(target, overwrite=overwrite, inputs=model_source(model)) as tmp:
        torch.export.save(program, str(tmp))
    return target


def _example_inputs(seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask with padding, so tracing keeps the masking path."""
    ids = torch.ones(2, seq_len, dtype=torch.long, device=device)
    mask = torch.ones(2, seq_len, dtype=torch.long, device=device)
    mask[1, seq_len // 2:] = 0
    return ids, mask


class _TaskOutputs(nn.Module):
    """Adapter with positional tensor inputs and the task's output tensors (one tensor, or a tuple for several), as
    exporters want; as a context manager it holds the model in eval mode and restores its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.outputs = task_of_head(model).outputs
        self._was_training = model.training

    def __enter__(self) -> "_TaskOutputs":
        return self.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self._was_training)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        result = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tensors = tuple(result[name] for name in self.outputs)
        return tensors[0] if len(tensors) == 1 else tensors
