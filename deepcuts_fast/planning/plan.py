"""`Plan`: which attention heads and FFN neurons of each encoder layer to keep."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError

FORMAT = "deepcuts-plan/1"


@dataclass
class Plan:
    """Kept head and neuron indices per encoder layer, with the widths they were chosen from."""

    heads: list[list[int]]
    neurons: list[list[int]]
    num_heads: list[int]  # heads per layer of the model the plan was made for
    ffn_widths: list[int]  # FFN width per layer of that model
    target: dict = field(default_factory=dict)  # what was asked (for the record)

    def __post_init__(self) -> None:
        self.heads = [sorted(int(h) for h in layer) for layer in self.heads]
        self.neurons = [sorted(int(n) for n in layer) for layer in self.neurons]
        if not (len(self.heads) == len(self.neurons) == len(self.num_heads) == len(self.ffn_widths)):
            raise DeepCutsError("plan lists have different numbers of layers")
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            _check_indices(h, self.num_heads[i], f"layer {i} heads")
            _check_indices(n, self.ffn_widths[i], f"layer {i} neurons")
        if not any(self.heads) and not any(self.neurons):
            raise DeepCutsError("this plan removes every head and every FFN neuron; ask for a larger target")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"format": FORMAT, "heads": self.heads, "neurons": self.neurons, "num_heads": self.num_heads,
                "ffn_widths": self.ffn_widths, "target": self.target}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        """Rebuild a plan written by `to_dict`."""
        if d.get("format") != FORMAT:
            raise DeepCutsError(f"not a deepcuts plan (format {d.get('format')!r})")
        try:
            return cls(heads=d["heads"], neurons=d["neurons"], num_heads=list(d["num_heads"]),
                       ffn_widths=list(d["ffn_widths"]), target=dict(d.get("target", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise DeepCutsError(f"malformed plan: {e}") from e

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
            lines.append(f"{i:>5}  {len(h):>3}/{self.num_heads[i]:<3} ({len(h) / max(1, self.num_heads[i]):5.1%})"
                         f"  {len(n):>5}/{self.ffn_widths[i]:<5} ({len(n) / max(1, self.ffn_widths[i]):5.1%})")
        total_h, total_n = sum(map(len, self.heads)), sum(map(len, self.neurons))
        lines.append(f"total  {total_h:>3}/{sum(self.num_heads):<3}          {total_n:>5}/{sum(self.ffn_widths)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_indices(indices: list[int], width: int, what: str) -> None:
    if len(set(indices)) != len(indices):
        raise DeepCutsError(f"{what}: repeated indices")
    if indices and (indices[0] < 0 or indices[-1] >= width):
        raise DeepCutsError(f"{what}: indices must lie in [0, {width})")
