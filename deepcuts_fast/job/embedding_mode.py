"""Sentence-embedding mode: the job's base model, where it is a sentence-embedding model (a sentence-transformers
folder such as the packaged all-MiniLM-L6-v2), pruned without labels and judged against itself.

The other sections prune a classifier fine-tuned from the base model, whose encoder has moved; an embedding model is
used as it is, through its pooled embedding. So this section prunes the base model as given with
`prune_without_retraining(..., objective="distill")` (the scores' gradients come from the model's own pooled
embedding; the calibration texts are the job's training draw with the labels dropped), one unit-scoring pass shared
by every budget, and judges each slim model by how well it keeps the dense model's embeddings on the job's test
texts (`evaluate_embeddings`: mean cosine, nearest-neighbour overlap, a frozen-embedding probe) and by its fp32
latency against the dense model. The goals at keep_flops 0.5 are `benchmarks/bench_embedding.py`'s.
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..embedding_metrics import NEIGHBOURS, evaluate_embeddings
from ..models import load_model, resolve_model_path
from ..pipeline import prune_without_retraining
from ..pruning import save_pretrained
from ..pruning.sentence_folder import MODULES_FILE
from ..scoring import Scores, score_many
from ..tasks import EMBEDDING, without_labels
from . import structured_mode
from .config import JobConfig

CRITERION = "fisher"  # the unit scores of the label-free pipeline: its embedding measurements were made with Fisher
GOAL_KEEP = 0.5  # the budget the goals are stated for; its slim model is saved next to the report
GOALS = (("cosine", "cosine", 0.95), ("overlap", "NN@10", 0.70), ("probe", "probe", -0.01))
"""(key of the row, its name in the report, the least value that meets the goal): mean cosine slim vs dense >= 0.95,
nearest-neighbour overlap@10 >= 0.70, probe accuracy slim - dense within 1 point below."""
SAVED_FOLDER = f"embedding-keep{GOAL_KEEP:g}"


def skip_reason(base: str | None, keeps: tuple[float, ...]) -> str | None:
    """Why the section does not run (None: it runs): the job's model was given with a task head (`base` None: there
    is no embedding model as given), the base model's folder has no sentence-transformers `modules.json`, or the
    run has no embedding budgets."""
    if not keeps:
        return "the run was configured without embedding budgets (--no-embedding, or embedding_keep_flops empty)"
    if base is None:
        return "the job's model was given with a trained task head, not as a sentence-embedding model"
    if not (Path(resolve_model_path(base)) / MODULES_FILE).is_file():
        return (f"the job's model {base!r} is not a sentence-embedding model (no local folder with the "
                f"sentence-transformers {MODULES_FILE})")
    return None


def probe_problem(labelled: list[dict]) -> str | None:
    """Why no probe can be fitted on the labelled training draw (None: it can): labels missing or real-valued (the
    probe is a classifier), a single class, or scikit-learn not installed."""
    labels = [b.get("labels") for b in labelled]
    if not labels or any(not torch.is_tensor(y) for y in labels):
        return "the data has no labels"
    if any(y.is_floating_point() for y in labels):
        return "the labels are real values and the probe is a classifier"
    if torch.cat([y.reshape(-1) for y in labels]).unique().numel() < 2:
        return "the training draw has a single class"
    if importlib.util.find_spec("sklearn") is None:
        return "scikit-learn is not installed (pip install 'deepcuts-fast[embeddings]')"
    return None


class EmbeddingMode:
    """The base embedding model `base` pruned label-free per budget, each slim model measured against it. The dense
    model, the training draw and the shared unit scores are made on first use, so a resumed run needs none."""

    def __init__(self, base: str, draw: Callable[[int, int], list], test: list, config: JobConfig, seq_len: int,
                 dtype: str, progress: bool):
        """`draw(seed, examples)`: the job's shuffled labelled training batches; `test`: its labelled test batches;
        `seq_len`: the sequence length of the FLOP budgets and the latency; `dtype`: the refits' precision."""
        self.base, self.draw, self.test, self.config = base, draw, test, config
        self.seq_len, self.dtype, self.progress = seq_len, dtype, progress
        self._dense: nn.Module | None = None
        self._labelled: list | None = None
        self._scores: dict[str, Scores] | None = None
        self.score_seconds: float | None = None

    @property
    def dense(self) -> nn.Module:
        """The base model as given: its encoder alone, as sentence-transformers runs it."""
        if self._dense is None:
            self._dense = load_model(self.base, task=EMBEDDING)
        return self._dense

    @property
    def labelled(self) -> list:
        """`config.embedding_examples` training examples on the job's seed, with their labels (the probe's)."""
        if self._labelled is None:
            self._labelled = self.draw(self.config.seed, self.config.embedding_examples)
        return self._labelled

    def calibration(self) -> list:
        """The training draw with the labels removed: what the label-free pruning sees."""
        return [without_labels(b) for b in self.labelled]

    def scores(self) -> dict[str, Scores]:
        """Fisher unit scores of the dense model on the calibration texts (distillation objective), made once and
        shared by every budget."""
        if self._scores is None:
            start = time.perf_counter()
            self._scores = score_many(self.dense, self.calibration(), [CRITERION], granularity="unit",
                                      objective="distill", seed=self.config.seed, dtype=self.config.dtype,
                                      progress=self.progress)
            self.score_seconds = round(time.perf_counter() - start, 2)
        return self._scores

    def prune(self, keep: float, out: Path) -> dict:
        """The slim model at `keep` of the encoder FLOPs and its embedding metrics against the dense model on the
        test texts (the probe fitted on the labelled training draw, where it can be); the `GOAL_KEEP` one is saved
        under `out` with the sentence-transformers files of the base folder."""
        c = self.config
        slim, plan, info = prune_without_retraining(self.dense, self.calibration(), keep, criterion=CRITERION,
                                                    seq_len=self.seq_len, scores=self.scores(), dtype=self.dtype,
                                                    method=c.embedding_method, objective="distill", seed=c.seed)
        no_probe = probe_problem(self.labelled)
        texts = sum(int(b["input_ids"].shape[0]) for b in self.test)
        metrics = evaluate_embeddings(slim, self.dense, self.test, k=min(NEIGHBOURS, texts - 1), seed=c.seed,
                                      probe_train=None if no_probe else self.labelled)
        row = {"keep_flops": keep, "method": c.embedding_method, "criterion": CRITERION,
               "objective": info["objective"], **metrics.to_dict(), "probe_skipped": no_probe,
               "calibration_examples": sum(int(b["input_ids"].shape[0]) for b in self.labelled),
               "heads": info["heads"], "ffn": info["neurons"], "flop_ratio": 1 / info["flops_kept"],
               "params": sum(p.numel() for p in slim.parameters()), "timings": info["timings"],
               "score_seconds": self.score_seconds, "plan": plan.to_dict(), "saved_to": None}
        if keep == GOAL_KEEP:
            save_pretrained(slim, out / SAVED_FOLDER, plan=plan, overwrite=True)
            row["saved_to"] = SAVED_FOLDER
        return row

    def latency(self, rows: list[dict]) -> list[dict]:
        """Dense and every slim model (rebuilt from its plan: the refit changes no shape) in fp32 on the CPU at the
        job's latency batch and sequence, in one benchmark run of interleaved rounds: median, IQR, speedup."""
        named = [{**r, "criterion": r["method"]} for r in rows]
        return structured_mode.latency(self.dense, named, "cpu", "fp32", self.config.latency_batch, self.seq_len,
                       self.config.latency_repeats)


def summary(base: str, rows: list[dict], timed: list[dict]) -> dict:
    """The section of results.json: every budget's row with its latency (dense and slim median ms, IQR, speedup),
    the settings they share, the benchmark's noise warnings and the goals."""
    dense = timed[0]
    for row, t in zip(rows, timed[1:]):
        row.update({"dense_ms": dense["median_ms"], "dense_iqr_ms": dense["iqr_ms"], "slim_ms": t["median_ms"],
                    "slim_iqr_ms": t["iqr_ms"], "speedup": t["speedup"]})
    first = rows[0]
    return {"model": base, "pooling": first["pooling"], "normalize": first["normalize"],
            "calibration_examples": first["calibration_examples"], "test_examples": first["n"],
            "probe_skipped": first["probe_skipped"], "latency_warnings": dense.get("warnings", []),
            "rows": rows, "goals": goals(rows)}


def goals(rows: list[dict]) -> list[dict]:
    """Each goal at `GOAL_KEEP`: `name`, `keep_flops`, `target`, `measured` (the probe's: slim - dense as a fraction)
    and `met` (None: not measured, i.e. no probe or no row at that budget)."""
    row = next((r for r in rows if r["keep_flops"] == GOAL_KEEP), None)
    out = []
    for key, name, least in GOALS:
        if key == "probe":
            measured = None if row is None or row["probe"] is None else row["probe"]["diff"]
            target = f"slim - dense >= {100 * least:+g} point"
        else:
            measured = None if row is None else row[key]
            target = f">= {least:g}"
        out.append({"name": name, "keep_flops": GOAL_KEEP, "target": target,
                    "measured": None if measured is None else round(measured, 4),
                    "met": None if measured is None else measured >= least - 1e-9})
    return out

