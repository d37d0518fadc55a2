"""`Scores`: per-parameter importance (name -> tensor) plus per-unit views, saved as safetensors."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..errors import DeepCutsError
from ..outputs import write_file
from .criteria import CRITERIA
from .layout import LayerLayout, check_layer_shapes, reduce_to_units

FORMAT = "deepcuts-scores/1"
FISHER_PREFIX = "fisher/"  # where a file keeps the Fisher scores that came with the criterion's


class Scores(Mapping[str, torch.Tensor]):
    """Importance scores of one criterion.

    At `weight` granularity it maps every prunable parameter name to a score tensor of the same
    shape; at `unit` granularity the mapping is empty and only the head / neuron views exist.
    Tensors live on the device the model was scored on (`.to("cpu")` moves them; `save` does).

    `fisher`: Fisher's unit scores from the same calibration pass (None for scores made without
    data, and for Fisher's own scores). They estimate each unit's loss increase, which makes units
    comparable across layers and unit types: `plan` allocates its budget by them.
    `meta["model_fingerprint"]` identifies the weights the scores were computed on.
    """

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        layout: list[LayerLayout],
        meta: Mapping,
        heads: list[torch.Tensor] | None = None,
        neurons: list[torch.Tensor] | None = None,
        interactions: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        fisher: "Scores | None" = None,
    ) -> None:
        self._weights = dict(weights)
        self.layout = list(layout)
        self.meta = dict(meta)
        if heads is None or neurons is None:
            if not self._weights:
                raise ValueError("Scores needs per-weight scores or per-unit scores")
            units = [reduce_to_units(layer, self._weights) for layer in self.layout]
            heads, neurons = [u[0] for u in units], [u[1] for u in units]
        self._heads = list(heads)
        self._neurons = list(neurons)
        self.interactions = None if interactions is None else [tuple(g) for g in interactions]
        self.fisher = fisher

    # -- mapping over per-parameter scores ---------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __repr__(self) -> str:
        return (
            f"Scores(criterion={self.criterion!r}, granularity={self.granularity!r}, "
            f"layers={len(self.layout)}, tensors={len(self)})"
        )

    @property
    def criterion(self) -> str:
        return self.meta.get("criterion", "")

    @property
    def estimates_loss(self) -> bool:
        """Whether these are the scores of a criterion that is itself the loss estimate `plan` allocates by
        (Fisher's, as `criterion.estimates_loss` declares), so they carry no `fisher` of their own."""
        found = CRITERIA.get(self.criterion)
        return found is not None and found.estimates_loss

    @property
    def model_fingerprint(self) -> str | None:
        """Hash of the weights these scores were computed on (None in files written before it was recorded)."""
        return self.meta.get("model_fingerprint")

    @property
    def granularity(self) -> str:
        return "weight" if self._weights else "unit"

    def to(self, device: str | torch.device) -> "Scores":
        """A copy with every tensor on `device`."""
        interactions = (None if self.interactions is None
                        else [(h.to(device), n.to(device)) for h, n in self.interactions])
        return Scores({k: v.to(device) for k, v in self._weights.items()}, self.layout, self.meta,
                      heads=[h.to(device) for h in self._heads], neurons=[n.to(device) for n in self._neurons],
                      interactions=interactions, fisher=None if self.fisher is None else self.fisher.to(device))

    def __add__(self, other: "Scores") -> "Scores":
        """The sum of two score sets of the same criterion and model (e.g. two shards of the batches)."""
        if not isinstance(other, Scores):
            return NotImplemented
        if (self.criterion, self.granularity, set(self), self.model_fingerprint) != (
                other.criterion, other.granularity, set(other), other.model_fingerprint) or [
                layer.to_dict() for layer in self.layout] != [layer.to_dict() for layer in other.layout]:
            raise DeepCutsError(f"cannot add {other!r} to {self!r}: they differ in criterion, granularity or model")
        meta = {**self.meta, "batches": self.meta.get("batches", 0) + other.meta.get("batches", 0)}
        interactions = None
        if self.interactions is not None and other.interactions is not None:
            interactions = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(self.interactions, other.interactions)]
        fisher = None
        if self.fisher is not None and other.fisher is not None:
            fisher = self.fisher + other.fisher
        return Scores({k: v + other[k] for k, v in self._weights.items()}, self.layout, meta,
                      heads=[a + b for a, b in zip(self._heads, other._heads)],
                      neurons=[a + b for a, b in zip(self._neurons, other._neurons)], interactions=interactions,
                      fisher=fisher)

    # -- unit views ---------------------------------------------------------------------------
    def heads(self, layer: int) -> torch.Tensor:
        """Score of every attention head of encoder layer `layer`."""
        return self._heads[layer]

    def neurons(self, layer: int) -> torch.Tensor:
        """Score of every FFN neuron of encoder layer `layer`."""
        return self._neurons[layer]

    def unit_scores(self) -> dict[str, list[torch.Tensor]]:
        """{'heads': [per layer], 'neurons': [per layer]}."""
        return {"heads": list(self._heads), "neurons": list(self._neurons)}

    # `interactions` (Fisher scores only): per layer (head matrix, neuron matrix), the sums over
    # calibration examples of g g^T where g holds one example's mask gradients; the unit scores
    # are their diagonals. Mask rearrangement minimises z^T F z over the pruned units z.

    # -- masks ----------------------------------------------------------------------------------
    def masks(self, compression: float, scope: str = "layer", params: str = "model") -> dict[str, torch.Tensor]:
        """Paper-style unstructured keep-masks reaching `compression` = total / remaining params.

        `scope="layer"` keeps the same top fraction of every tensor, `"global"` one top fraction
        over all of them; `params="encoder"` counts the ratio over the encoder layers only (small
        models whose embeddings dominate cannot reach paper ratios otherwise).
        """
        from .masks import masks_for_compression

        if not self._weights:
            raise DeepCutsError("masks need weight-granularity scores; score with granularity='weight'")
        return masks_for_compression(self._weights, self.meta, compression, scope, params)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the scores atomically as one safetensors file (metadata in its header); an existing file is
        replaced only with `overwrite`."""
        from safetensors.torch import save_file

        tensors = self.to_tensors()
        header = {"format": FORMAT, **self.header()}
        with write_file(path, overwrite=overwrite, name="scores file") as tmp:
            save_file(tensors, str(tmp), metadata=header)

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every score tensor on the CPU, keyed as in the saved file (after `prefix`)."""
        tensors = {f"{prefix}weights/{k}": v.detach().cpu().contiguous() for k, v in self._weights.items()}
        for i, (h, n) in enumerate(zip(self._heads, self._neurons)):
            tensors[f"{prefix}units/heads/{i}"] = h.detach().cpu().contiguous()
            tensors[f"{prefix}units/neurons/{i}"] = n.detach().cpu().contiguous()
        for i, (h, n) in enumerate(self.interactions or []):
            tensors[f"{prefix}interactions/heads/{i}"] = h.detach().cpu().contiguous()
            tensors[f"{prefix}interactions/neurons/{i}"] = n.detach().cpu().contiguous()
        if self.fisher is not None:
            tensors.update(self.fisher.to_tensors(prefix=f"{prefix}{FISHER_PREFIX}"))
        return tensors

    def header(self) -> dict[str, str]:
        """The JSON strings (meta, layout, the Fisher scores' meta) that `from_tensors` needs besides the tensors."""
        header = {"meta": json.dumps(self.meta), "layout": json.dumps([layer.to_dict() for layer in self.layout])}
        if self.fisher is not None:
            header["fisher_meta"] = json.dumps(self.fisher.meta)
        return header

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], header: Mapping[str, str], prefix: str = "") -> "Scores":
        """Rebuild scores from `to_tensors(prefix)` and `header()`; KeyError/ValueError when incomplete."""
        layout = [LayerLayout.from_dict(d) for d in json.loads(header["layout"])]
        heads = [tensors[f"{prefix}units/heads/{i}"] for i in range(len(layout))]
        neurons = [tensors[f"{prefix}units/neurons/{i}"] for i in range(len(layout))]
        start = f"{prefix}weights/"
        weights = {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}
        interactions = None
        if f"{prefix}interactions/heads/0" in tensors:
            interactions = [(tensors[f"{prefix}interactions/heads/{i}"], tensors[f"{prefix}interactions/neurons/{i}"])
                            for i in range(len(layout))]
        fisher = None
        if "fisher_meta" in header:
            fisher = cls.from_tensors(tensors, {"meta": header["fisher_meta"], "layout": header["layout"]},
                                      prefix=f"{prefix}{FISHER_PREFIX}")
        meta = json.loads(header["meta"])
        if "noise_std" in meta:  # files written before relative noise existed had absolute noise
            meta.setdefault("noise_scale", "absolute")
        return cls(weights, layout, meta, heads=heads, neurons=neurons, interactions=interactions, fisher=fisher)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scores":
        """Read scores written by `save` (safetensors only), refusing what no scoring pass writes (a dtype without
        float32's range, a tensor of no layer, shapes that do not fit together): an edited or converted file fails
        here, by name, instead of planning silently wrong. bfloat16 tensors are read as float32."""
        p = Path(path)
        if not p.is_file():
            raise DeepCutsError(f"scores file {p} does not exist; create it with `deepcuts score`")
        header, tensors = read_safetensors(p, "is not a readable safetensors scores file")
        if header.get("format") != FORMAT:
            raise DeepCutsError(f"{p} is not a deepcuts scores file (format {header.get('format')!r})")
        try:
            layout = [LayerLayout.from_dict(d) for d in json.loads(header["layout"])]
            scores = cls.from_tensors(_checked_tensors(tensors, layout, "fisher_meta" in header, p), header)
        except (KeyError, ValueError, TypeError) as e:
            raise DeepCutsError(f"{p} is a damaged deepcuts scores file (missing or unreadable {e}); "
                                "score again with `deepcuts score`") from e
        _check_shapes(scores, p)
        return scores


def read_safetensors(path: str | os.PathLike, problem: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(header metadata, every tensor) of a safetensors file; a DeepCutsError "`path` `problem` (why)" otherwise."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DeepCutsError(f"{path} {problem} ({e})") from e


def dtype_problem(dtype: torch.dtype) -> str | None:
    """Why tensors of `dtype` cannot hold scores (a phrase such as "bool, not a floating-point type"), or None:
    scores need float32's range, which bfloat16 and float64 have and float16 (6.1e-05 to 65504) lacks."""
    if not dtype.is_floating_point:
        return f"{str(dtype).removeprefix('torch.')}, not a floating-point type"
    info, single = torch.finfo(dtype), torch.finfo(torch.float32)
    if info.max < single.max / 2 or info.tiny > single.tiny * 2:  # a binary exponent less at either end
        return (f"{str(dtype).removeprefix('torch.')}, whose range ({info.tiny:.2g} to {info.max:.5g}) is narrower "
                "than float32's: small scores such as Fisher's underflow to 0 there and change the plan")
    return None


def _file_keys(layout: list[LayerLayout], fisher: bool) -> set[str]:
    """Every tensor name `to_tensors` may write for scores of `layout` (with Fisher's scores when `fisher`)."""
    keys = set()
    for prefix in ("", FISHER_PREFIX) if fisher else ("",):
        for i, layer in enumerate(layout):
            keys.update(f"{prefix}{kind}/{unit}/{i}" for kind in ("units", "interactions")
                        for unit in ("heads", "neurons"))
            keys.update(f"{prefix}weights/{module}.{p}" for module in layer.names.values() for p in ("weight", "bias"))
    return keys


def _checked_tensors(tensors: Mapping[str, torch.Tensor], layout: list[LayerLayout], fisher: bool,
                     path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a scores file, bfloat16 ones as float32, after refusing a tensor that belongs to no layer of
    the file's `layout` and one whose dtype cannot hold scores (`dtype_problem`)."""
    known = _file_keys(layout, fisher)
    out = {}
    for key, t in tensors.items():
        if key not in known:
            raise DeepCutsError(f"{path} holds a tensor {key!r} that fits none of the {len(layout)} encoder layers "
                                "its layout records (their prunable parameters, unit scores and interactions); the "
                                "file was edited or mixed with another model's: score again with `deepcuts score`")
        problem = dtype_problem(t.dtype)
        if problem:
            raise DeepCutsError(f"{path}: tensor {key!r} is {problem}; scores are float32 (bfloat16 is read as "
                                "float32), so score again with `deepcuts score` rather than converting the file")
        out[key] = t.float() if t.dtype == torch.bfloat16 else t
    return out


def _check_shapes(scores: Scores, path: Path) -> None:
    """Refuse tensors of a scores file whose shapes do not fit together layer by layer (`check_layer_shapes`), and
    Fisher scores that cover other unit counts than the criterion's."""
    for s in (scores, scores.fisher):
        if s is None:
            continue
        for i, layer in enumerate(s.layout):
            interactions = None if s.interactions is None else s.interactions[i]
            check_layer_shapes(i, layer, (s.heads(i), s.neurons(i)), s, interactions, f"{path} ({s.criterion})")
            units = (scores.heads(i).numel(), scores.neurons(i).numel())
            if (s.heads(i).numel(), s.neurons(i).numel()) != units:
                raise DeepCutsError(f"{path}: the Fisher scores of layer {i} cover {s.heads(i).numel()} heads / "
                                    f"{s.neurons(i).numel()} FFN neurons, the {scores.criterion} scores {units[0]} / "
                                    f"{units[1]}; the file was edited: score again with `deepcuts score`")
