"""How well a slim embedding model keeps its dense model's embeddings, on the same texts: the mean cosine between
the two embeddings of each text, the nearest-neighbour overlap@k (how many of each text's k nearest neighbours by
cosine, among the evaluated texts, slim and dense agree on), and a frozen-embedding probe (a logistic regression
fitted on each model's embeddings of a labelled train split, accuracy on the evaluated texts, as MTEB's
classification tasks do), whose accuracy difference slim - dense comes with its paired bootstrap interval and
McNemar's exact p on the same test examples (`stats.compare`).

Both models pool the same way: as the dense model's sentence-transformers folder says (`1_Pooling/config.json`,
`modules.json`; a slim folder does not carry them), else the mean over the real tokens, unless `pooling=` /
`normalize=` say otherwise. The probe needs scikit-learn: pip install 'deepcuts-fast[embeddings]'.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeepCutsError, check_choice
from .models import check_token_ids, model_device, to_device
from .precision import autocast, choose
from .scoring.objective import POOLING_MODES, Objective, sentence_pooling
from .stats import Comparison, compare, points
from .tasks import without_labels

Batch = Mapping[str, Any]
NEIGHBOURS = 10  # k of the nearest-neighbour overlap
PROBE_MAX_ITER = 1000  # lbfgs iterations of the logistic-regression probe (MTEB's 100 may stop short of convergence)
CHUNK = 1024  # rows of the similarity matrix held at once by `neighbour_overlap`


@dataclass(frozen=True)
class EmbeddingMetrics:
    """Slim against dense on `n` texts: mean (and lowest) per-text cosine, nearest-neighbour overlap@`k`, the probe
    comparison (accuracy of slim and dense probes and slim - dense with its interval and p; None without a probe),
    and how the embeddings were made (pooling, normalized, the precision the forwards ran in)."""

    n: int
    cosine: float
    cosine_min: float
    overlap: float
    k: int
    pooling: str
    normalize: bool
    dtype: str
    probe: Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metrics, the probe as `Comparison.to_dict` writes it."""
        out = {k: getattr(self, k) for k in ("n", "cosine", "cosine_min", "overlap", "k", "pooling", "normalize",
                                              "dtype")}
        return out | {"probe": None if self.probe is None else self.probe.to_dict()}

    def summary(self) -> str:
        """The metrics in one line (the probe's difference in points with its interval and p)."""
        text = (f"cosine={self.cosine:.4f} cosine_min={self.cosine_min:.4f} overlap@{self.k}={self.overlap:.4f} "
                f"n={self.n} pooling={self.pooling}{'+normalize' if self.normalize else ''} dtype={self.dtype}")
        if self.probe is not None:
            text += (f" probe_accuracy_slim={self.probe.value_a:.4f} probe_accuracy_dense={self.probe.value_b:.4f} "
                     f"probe_diff={points(self.probe.to_dict())} ({self.probe.test}) verdict={self.probe.verdict}")
        return text


def embed(model: nn.Module, batches: Iterable[Batch], pooling: str = "mean", normalize: bool = False,
          dtype: str | torch.dtype | None = torch.float32, what: str = "model") -> torch.Tensor:
    """(texts, width) fp32 embeddings of `batches` in their order: the encoder's token states (a head, if any, never
    runs) pooled over the real tokens with `pooling` (one of POOLING_MODES), L2-normalized with `normalize`; eval
    mode, no gradients (the model's mode is restored); `dtype` as `train.evaluate` takes it."""
    check_choice("pooling", pooling, POOLING_MODES)
    device = model_device(model)
    autocast_dtype = choose("infer", device, dtype).autocast_dtype
    objective = Objective("distill", output="embedding", pooling=pooling, normalize=normalize)
    was_training, rows = model.training, []
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                check_token_ids(model, batch, f"batch {i}")
                inputs = to_device(without_labels(batch), device)
                with autocast(device, autocast_dtype):
                    rows.append(objective.outputs(model, inputs).float().cpu())
    finally:
        model.train(was_training)
    if not rows:
        raise DeepCutsError("no batches to embed: pass at least one batch of texts (deepcuts_fast.data.make_batches)")
    out = torch.cat(rows)
    if not torch.isfinite(out).all():
        raise DeepCutsError(f"the {what} gives non-finite embeddings; check its weights, or evaluate in fp32")
    return out


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean, lowest) cosine between row i of `a` and row i of `b` over the rows."""
    _check_pair(a, b)
    cos = F.cosine_similarity(a.double(), b.double(), dim=1)
    return float(cos.mean()), float(cos.min())


def neighbour_overlap(a: torch.Tensor, b: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Mean over the rows of the share of row i's `k` nearest other rows by cosine in `a` that are also among its
    `k` nearest in `b` (1: both embeddings rank every text's neighbours alike)."""
    _check_pair(a, b)
    n = a.shape[0]
    _check_k(k, n)
    a, b = F.normalize(a.double(), dim=1), F.normalize(b.double(), dim=1)
    shared = 0
    for start in range(0, n, CHUNK):
        rows = torch.arange(start, min(start + CHUNK, n))
        tops = []
        for x in (a, b):
            sims = x[rows] @ x.T
            sims[torch.arange(len(rows)), rows] = -torch.inf  # a text is not its own neighbour
            tops.append(sims.topk(k, dim=1).indices)
        near_a = torch.zeros(len(rows), n, dtype=torch.bool).scatter_(1, tops[0], True)
        shared += int(near_a.gather(1, tops[1]).sum())
    return shared / (n * k)


def probe_predictions(train: torch.Tensor, labels: np.ndarray, test: torch.Tensor) -> np.ndarray:
    """Class ids a logistic regression (scikit-learn's `LogisticRegression`, default L2 penalty) fitted on the
    `train` embeddings and their `labels` predicts for the `test` embeddings."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise DeepCutsError("the embedding probe needs scikit-learn: pip install 'deepcuts-fast[embeddings]'") from e
    if np.unique(labels).size < 2:
        raise DeepCutsError("the probe's train texts have a single class; a classifier needs at least two")
    probe = LogisticRegression(max_iter=PROBE_MAX_ITER)
    probe.fit(train.double().numpy(), labels)
    return probe.predict(test.double().numpy())


def evaluate_embeddings(
    slim: nn.Module,
    dense: nn.Module,
    batches: Iterable[Batch],
    probe_train: Iterable[Batch] | None = None,
    k: int = NEIGHBOURS,
    pooling: str | None = None,
    normalize: bool | None = None,
    dtype: str | torch.dtype | None = torch.float32,
    seed: int = 0,
) -> EmbeddingMetrics:
    """Embedding metrics of `slim` against `dense` on the texts of `batches` (token batches of the same tokenizer,
    `deepcuts_fast.data.make_batches`): mean cosine, nearest-neighbour overlap@`k`, and, with `probe_train`
    (labelled batches of a train split; `batches` labelled too), each model's logistic-regression probe fitted on its
    own embeddings of `probe_train` and tested on `batches`, compared slim - dense (paired bootstrap with `seed`,
    McNemar). `pooling` / `normalize` None: as the dense model's folder says (else mean, not normalized). `dtype`:
    fp32 by default, so the numbers compare across machines; "auto" as `deepcuts_fast.precision` decides."""
    batches = list(batches)
    probe_train = None if probe_train is None else list(probe_train)
    folder = sentence_pooling(getattr(getattr(dense, "config", None), "_name_or_path", "") or "")
    pooling = folder[0] if pooling is None else pooling
    normalize = folder[1] if normalize is None else normalize
    check_choice("pooling", pooling, POOLING_MODES)
    _check_k(k, _count_texts(batches, (slim, dense)))
    if probe_train is not None:
        _count_texts(probe_train, (slim, dense))
        train_labels, test_labels = _labels(probe_train, "probe_train"), _labels(batches, "batches")
    options = dict(pooling=pooling, normalize=normalize, dtype=dtype)
    slim_emb = embed(slim, batches, what="slim model", **options)
    dense_emb = embed(dense, batches, what="dense model", **options)
    if slim_emb.shape[1] != dense_emb.shape[1]:
        raise DeepCutsError(f"the slim model's embeddings have width {slim_emb.shape[1]}, the dense model's "
                            f"{dense_emb.shape[1]}: compare a slim model with the dense model it was pruned from")
    cosine, cosine_min = mean_cosine(slim_emb, dense_emb)
    probe = None
    if probe_train is not None:
        predictions = [probe_predictions(embed(m, probe_train, what=f"{name} model", **options), train_labels, test)
                       for name, m, test in (("slim", slim, slim_emb), ("dense", dense, dense_emb))]
        probe = compare(predictions[0], predictions[1], test_labels, names=("slim", "dense"), seed=seed)
    return EmbeddingMetrics(n=len(slim_emb), cosine=cosine, cosine_min=cosine_min,
                            overlap=neighbour_overlap(slim_emb, dense_emb, k), k=k, pooling=pooling,
                            normalize=bool(normalize), dtype=choose("infer", model_device(slim), dtype).name,
                            probe=probe)


def _count_texts(batches: Sequence[Batch], models: Sequence[nn.Module]) -> int:
    """How many texts `batches` hold, after checking that every model can embed their token ids."""
    for i, batch in enumerate(batches):
        for model in models:
            check_token_ids(model, batch, f"batch {i}")
    return sum(int(batch["input_ids"].shape[0]) for batch in batches)


def _labels(batches: Sequence[Batch], what: str) -> np.ndarray:
    """The integer class ids of every batch, in order; a missing or real-valued label is an error."""
    out = []
    for i, batch in enumerate(batches):
        labels = batch.get("labels")
        if not torch.is_tensor(labels):
            raise DeepCutsError(f"{what} batch {i} has no 'labels'; the probe needs labelled train and test texts "
                                "(or pass no probe_train)")
        if labels.is_floating_point():
            raise DeepCutsError(f"{what} batch {i} has real-valued labels; the probe is a classifier: pass class ids")
        if labels.numel() != batch["input_ids"].shape[0]:
            raise DeepCutsError(f"{what} batch {i} has {labels.numel()} labels for {batch['input_ids'].shape[0]} "
                                "texts; give one label per text")
        out.append(labels.reshape(-1).cpu().numpy())
    if not out:
        raise DeepCutsError(f"{what} is empty; pass at least one labelled batch")
    return np.concatenate(out).astype(np.int64)


def _check_k(k: int, texts: int) -> None:
    """Refuse a neighbour count that is not an integer in [1, texts - 1]."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < texts:
        raise DeepCutsError(f"the nearest-neighbour overlap needs 1 <= k < texts; got k={k!r} for {texts} texts: "
                            "pass a smaller k or more texts")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    """Refuse embeddings that do not pair up row by row."""
    if a.dim() != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise DeepCutsError(f"slim and dense embeddings must be two (texts, width) tensors of one shape; got "
                            f"{tuple(a.shape)} and {tuple(b.shape)}: embed the same texts with both models")
