"""`Plan`: which attention heads and FFN neurons of each encoder layer to keep, which encoder layers to remove
whole, with the widths they were chosen from and a record of what was asked and achieved; saved as JSON and
validated strictly when read (ints where it holds indices and widths, in range, no duplicates), since a plan file
may be hand-edited. A plan that removes no layer is written in the first format, so older readers still read it; one
that removes layers is written in the second, which older readers refuse instead of keeping the layers.
"""
from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, short_repr

FORMAT = "deepcuts-plan/1"  # heads and neurons per layer
FORMAT_DROPPING = "deepcuts-plan/2"  # ... and encoder layers removed whole (`dropped`)

MAX_TARGET_DEPTH = 16  # nesting a plan's `target` record may have (it is small and flat when `plan` writes it)


@dataclass
class Plan:
    """Kept head and neuron indices per encoder layer, with the widths they were chosen from, and the layers
    removed whole (`dropped`: their heads and neurons lists are empty; the layer goes, its LayerNorms and residual
    path with it, so the hidden states pass it unchanged)."""

    heads: list[list[int]]
    neurons: list[list[int]]
    num_heads: list[int]  # heads per layer of the model the plan was made for
    ffn_widths: list[int]  # FFN width per layer of that model
    target: dict = field(default_factory=dict)  # what was asked (for the record)
    dropped: list[int] = field(default_factory=list)  # encoder layers removed whole, ascending

    def __post_init__(self) -> None:
        self.num_heads = _widths(self.num_heads, "num_heads")
        self.ffn_widths = _widths(self.ffn_widths, "ffn_widths")
        self.heads = _layer_indices(self.heads, "heads")
        self.neurons = _layer_indices(self.neurons, "neurons")
        if not (len(self.heads) == len(self.neurons) == len(self.num_heads) == len(self.ffn_widths)):
            raise DeepCutsError(f"plan lists have different numbers of layers (heads {len(self.heads)}, neurons "
                                f"{len(self.neurons)}, num_heads {len(self.num_heads)}, ffn_widths "
                                f"{len(self.ffn_widths)}); give one entry per encoder layer in each")
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            _check_indices(h, self.num_heads[i], f"layer {i} heads")
            _check_indices(n, self.ffn_widths[i], f"layer {i} neurons")
        self.target = _target(self.target)
        self.dropped = _dropped(self.dropped, self.heads, self.neurons)
        if not any(self.heads) and not any(self.neurons):
            raise DeepCutsError("this plan removes every head and every FFN neuron; ask for a larger target")

    @property
    def kept_layers(self) -> list[int]:
        """The encoder layers the slim model keeps (all but `dropped`), ascending."""
        gone = set(self.dropped)
        return [i for i in range(len(self.heads)) if i not in gone]

    @property
    def achieved(self) -> dict[str, float]:
        """The fractions of the dense encoder this plan keeps, by budget kind (keep_flops at the plan's seq_len,
        keep_params, keep_heads, keep_neurons); empty for plans not made by `plan` or written before it recorded
        them."""
        return dict(self.target.get("achieved", {}))

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = {"format": FORMAT_DROPPING if self.dropped else FORMAT, "heads": self.heads, "neurons": self.neurons,
             "num_heads": self.num_heads, "ffn_widths": self.ffn_widths, "target": self.target}
        if self.dropped:
            d["dropped"] = self.dropped
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        """Rebuild a plan written by `to_dict`, checking every field strictly (files may be edited by hand)."""
        if not isinstance(d, Mapping):
            raise DeepCutsError(f"a plan is a JSON object with format, heads, neurons, num_heads and ffn_widths, "
                                f"not a {type(d).__name__}; pass the dict `Plan.to_dict` wrote")
        if d.get("format") not in (FORMAT, FORMAT_DROPPING):
            raise DeepCutsError(f"not a deepcuts plan (format {short_repr(d.get('format'))}, expected {FORMAT!r} or "
                                f"{FORMAT_DROPPING!r}); a newer deepcuts-fast may have written it")
        if d.get("format") == FORMAT and "dropped" in d:
            raise DeepCutsError(f"malformed plan: format {FORMAT!r} removes no layer, but the plan lists 'dropped' "
                                "layers; write plans with Plan.to_dict")
        missing = [k for k in ("heads", "neurons", "num_heads", "ffn_widths") if k not in d]
        if missing:
            raise DeepCutsError(f"malformed plan: {', '.join(missing)} missing; write plans with Plan.to_dict")
        return cls(heads=d["heads"], neurons=d["neurons"], num_heads=d["num_heads"], ffn_widths=d["ffn_widths"],
                   target=d.get("target", {}), dropped=d.get("dropped", []))

    @classmethod
    def from_json(cls, text: str, source: str = "the plan") -> "Plan":
        """Parse a plan from JSON text; malformed or absurdly nested text is a DeepCutsError naming `source`."""
        try:
            d = json.loads(text)
        except RecursionError as e:
            raise DeepCutsError(f"{source} is nested too deeply to be a plan; write plans with Plan.to_dict") from e
        except ValueError as e:
            raise DeepCutsError(f"{source} is not valid JSON ({e}); write plans with Plan.to_dict") from e
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan file (such as the deepcuts_plan.json of a slim model folder)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DeepCutsError(f"cannot read plan file {path} ({e})") from e
        return cls.from_json(text, source=f"plan file {path}")

    def check_model(self, model: nn.Module) -> None:
        """Fail clearly when `model` does not have the widths this plan was made for."""
        layers = encoder_layers(model)
        if len(layers) != len(self.heads):
            raise DeepCutsError(f"plan has {len(self.heads)} layers, the model {len(layers)}")
        for i, layer in enumerate(layers):
            if (layer.num_heads, layer.ffn_width) != (self.num_heads[i], self.ffn_widths[i]):
                raise DeepCutsError(
                    f"layer {i} of the model has {layer.num_heads} heads / {layer.ffn_width} FFN neurons, the plan "
                    f"expects {self.num_heads[i]} / {self.ffn_widths[i]}; plan and prune the same model"
                )

    def summary(self) -> str:
        """Per-layer table of kept heads and neurons."""
        lines = ["layer  heads kept        FFN neurons kept"]
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            if i in self.dropped:
                lines.append(f"{i:>5}  removed whole")
                continue
            lines.append(f"{i:>5}  {len(h):>3}/{self.num_heads[i]:<3} ({len(h) / max(1, self.num_heads[i]):5.1%})"
                         f"  {len(n):>5}/{self.ffn_widths[i]:<5} ({len(n) / max(1, self.ffn_widths[i]):5.1%})")
        total_h, total_n = sum(map(len, self.heads)), sum(map(len, self.neurons))
        lines.append(f"total  {total_h:>3}/{sum(self.num_heads):<3}          {total_n:>5}/{sum(self.ffn_widths)}"
                     + (f"   ({len(self.dropped)} of {len(self.heads)} layers removed)" if self.dropped else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_indices(indices: list[int], width: int, what: str) -> None:
    if len(set(indices)) != len(indices):
        raise DeepCutsError(f"{what}: repeated indices; list each kept unit once")
    if indices and (indices[0] < 0 or indices[-1] >= width):
        bad = indices[0] if indices[0] < 0 else indices[-1]
        raise DeepCutsError(f"{what}: indices must lie in [0, {width}), got {bad}")


def _is_int(value) -> bool:
    """Whether `value` is an integer proper (an int or a numpy integer; a bool, float or string is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _widths(value, what: str) -> list[int]:
    """A plan's per-layer widths as ints >= 0 (a layer of a slim model may have no heads or no neurons)."""
    if not isinstance(value, (list, tuple)):
        raise DeepCutsError(f"plan {what} must be a list with one width per layer, got {short_repr(value)}")
    for i, w in enumerate(value):
        if not _is_int(w) or w < 0:
            raise DeepCutsError(f"plan {what} of layer {i} must be an int >= 0, got {short_repr(w)}")
    return [int(w) for w in value]


def _layer_indices(value, what: str) -> list[list[int]]:
    """A plan's kept units, one list of int indices per layer, sorted; anything else (a string of digits, a float,
    a bool, a nested list) is an error rather than something to coerce."""
    if not isinstance(value, (list, tuple)):
        raise DeepCutsError(f"plan {what} must be a list with one list of kept indices per layer, got "
                            f"{short_repr(value)}")
    layers = []
    for i, layer in enumerate(value):
        if not isinstance(layer, (list, tuple, range)):
            raise DeepCutsError(f"plan {what} of layer {i} must be a list of int indices, got {short_repr(layer)}")
        bad = next((v for v in layer if not _is_int(v)), None)
        if bad is not None:
            raise DeepCutsError(f"plan {what} of layer {i}: index {short_repr(bad)} is not an int; indices are ints")
        layers.append(sorted(int(v) for v in layer))
    return layers


def _dropped(value, heads: list[list[int]], neurons: list[list[int]]) -> list[int]:
    """A plan's removed layers: distinct int layer indices in range, sorted, whose kept lists are empty, and not
    every layer (a slim model keeps at least one)."""
    if not isinstance(value, (list, tuple, range)):
        raise DeepCutsError(f"plan dropped must be a list of encoder layer indices, got {short_repr(value)}")
    bad = next((v for v in value if not _is_int(v)), None)
    if bad is not None:
        raise DeepCutsError(f"plan dropped: layer {short_repr(bad)} is not an int; list layer indices")
    dropped = sorted(int(v) for v in value)
    _check_indices(dropped, len(heads), "plan dropped layers")
    if dropped and len(dropped) == len(heads):
        raise DeepCutsError(f"this plan removes all {len(heads)} encoder layers; keep at least one")
    for i in dropped:
        if heads[i] or neurons[i]:
            raise DeepCutsError(f"plan removes layer {i} whole but keeps {len(heads[i])} of its heads and "
                                f"{len(neurons[i])} of its neurons; give a removed layer empty heads and neurons")
    return dropped


def _target(value) -> dict:
    """A plan's record of what was asked (and achieved): a mapping with string keys, JSON values, little nesting."""
    if not isinstance(value, Mapping):
        raise DeepCutsError(f"plan target must be a mapping (what was asked), got {short_repr(value)}")
    _check_json(value, "plan target", MAX_TARGET_DEPTH)
    return dict(value)


def _check_json(value, what: str, depth: int) -> None:
    """Refuse values JSON cannot hold and nesting deeper than `depth` (bounded, so never a RecursionError)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return
    if depth <= 0:
        raise DeepCutsError(f"{what} is nested too deeply; a plan's target is a flat record")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DeepCutsError(f"{what} has a non-string key {short_repr(k)}")
            _check_json(v, what, depth - 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_json(v, what, depth - 1)
    else:
        raise DeepCutsError(f"{what} holds a {type(value).__name__}, which JSON cannot store")
