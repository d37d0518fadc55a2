"""Which encoder layers a plan removes whole: the ones asked by index, or the `drop_layers` least important by
`layer_importance` (`scoring.layer_importance`), never a layer the family cannot remove."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, short_repr
from ..families import family
from ..families.depth import check_removable
from .plan import _is_int


def dropped_layers(model: nn.Module, drop_layers: int | Sequence[int] | None,
                   layer_scores: Sequence[float] | None, scope: str) -> list[int]:
    """The layers to remove (ascending): `drop_layers` indices as given, or that many of the lowest
    `layer_scores` (ties: the later layer first, since late layers change the representation least in BERT-like
    encoders); none when `drop_layers` is None or 0."""
    count = len(encoder_layers(model))
    if drop_layers is None or (_is_int(drop_layers) and drop_layers == 0):
        return []
    if scope != "global":
        raise DeepCutsError("drop_layers removes whole layers, which only a global budget can weigh against the "
                            "units of other layers; use scope='global'")
    if _is_int(drop_layers):
        if not 0 < drop_layers < count:
            raise DeepCutsError(f"drop_layers={drop_layers}: the model has {count} encoder layers; remove between 1 "
                                f"and {count - 1} of them")
        scores = _layer_scores(layer_scores, count)
        order = sorted(family(model).removable_layers(model.config), key=lambda i: (scores[i], -i))
        if drop_layers > len(order):
            raise DeepCutsError(f"drop_layers={drop_layers}, but only {len(order)} layers of this "
                                f"{family(model).model_type} model can be removed whole")
        return sorted(order[:drop_layers])
    if not isinstance(drop_layers, (list, tuple, range)) or not all(_is_int(i) for i in drop_layers):
        raise DeepCutsError(f"drop_layers must be a count or a list of layer indices, got {short_repr(drop_layers)}")
    chosen = sorted(set(int(i) for i in drop_layers))
    outside = [i for i in chosen if not 0 <= i < count]
    if outside:
        raise DeepCutsError(f"drop_layers names layer {outside[0]}; the model has layers 0..{count - 1}")
    if len(chosen) == count:
        raise DeepCutsError(f"drop_layers names all {count} layers; keep at least one")
    check_removable(model, chosen)
    return chosen


def _layer_scores(layer_scores: Sequence[float] | None, count: int) -> list[float]:
    """`layer_scores` checked: one number per layer, not NaN."""
    if layer_scores is None:
        raise DeepCutsError("drop_layers=N chooses the N least important layers by layer_scores; pass "
                            "layer_scores=dc.layer_importance(model, batches), or name the layers: drop_layers=[...]")
    values = list(layer_scores)
    if len(values) != count or not all(isinstance(v, numbers.Real) and not math.isnan(v) for v in values):
        raise DeepCutsError(f"layer_scores must hold one number per encoder layer ({count}), not NaN; got "
                            f"{short_repr(layer_scores)}")
    return [float(v) for v in values]
