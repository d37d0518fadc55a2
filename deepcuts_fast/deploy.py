"""`deploy`: a (slim) sequence classifier in the fastest runtime this machine has, and `load_deployed` to run it.

Every installed runtime builds each precision it offers here (`deepcuts_fast.runtimes`); every variant is timed on
the user's batch size and sequence length, in interleaved rounds as `benchmarking.latency` times models, and
compared with the model itself in torch fp32 on held-out batches of the user's data. The fastest variant whose
predictions agree with torch fp32 on at least 1 - `tolerance` of the held-out rows is written, alone, with
`deploy.json` saying what it is, how fast, how close, and on which machine.

One module for the whole step (about 400 lines): its stages (split the data, build, compare, time, choose, publish,
load back) share the variant records and are read in order; each runtime's own code lives in `runtimes/`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DeepCutsError, first_line
from .outputs import check_folder, read_manifest, write_folder
from .runtimes import RUNTIMES, Runtime, Session, get_runtime, installed
from .runtimes.base import Feeds, feeds_of
from .runtimes.pytorch import session as torch_session
from .tasks import SEQUENCE, model_task, task_named

MANIFEST_FILE = "deploy.json"
DEPLOY_KIND = "deployment"  # the output folder's manifest kind
REFERENCE = "torch fp32"  # what every variant is compared with
CALIBRATION_EXAMPLES = 256  # at most this many examples calibrate int8 (the first batches of the shuffled data)
HELD_OUT_EXAMPLES = 512  # at most this many others check agreement
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd",
             "bf16", "i8mm")  # the /proc/cpuinfo flags that decide which kernels a runtime can use
VERSIONS = ("deepcuts-fast", "torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WARMUP = 3  # warm-up rounds at least, then on until every variant is steady (`benchmarking.latency.warm_up`)


@dataclass(frozen=True)
class Deployment:
    """What `deploy` wrote: the folder, its `deploy.json` contents, and the table of every variant it tried."""

    path: Path
    manifest: dict[str, Any]

    def table(self) -> list[str]:
        """Markdown lines: one row per variant, the chosen one marked, the rejected ones with why."""
        return variant_table(self.manifest)


def deploy(model: nn.Module | str | os.PathLike, out: str | os.PathLike, data: str | Sequence[Mapping[str, Any]],
           *, tokenizer=None, runtime: str = "auto", batch_size: int = 32, max_length: int = 128,
           tolerance: float = 0.01, split: str = "test", threads: int | None = None, repeats: int = 20,
           min_time: float = 1.0, overwrite: bool = False, log: Callable[[str], None] = print) -> Deployment:
    """Build `model` (a classifier, or its folder / alias) in every variant of `runtime` ("auto": every installed
    runtime), time each at `batch_size` x `max_length` tokens on `threads` threads, check each against the model in
    torch fp32 on held-out batches of `data`, and write the fastest one within `tolerance` to the folder `out`.

    `data` is labelled data as the other commands take it (a file, folder, 'rotten_tomatoes' or a hub name; its
    `split`), or tokenized batches. Its shuffled examples are cut in two: the first (up to 256) calibrate int8,
    the rest (up to 512) check agreement. A variant is accepted when its predictions equal torch fp32's on at
    least 1 - `tolerance` of the held-out rows. `repeats` / `min_time` are the timing floors of
    `dc.benchmark`. `out` is written atomically; an earlier deployment there is replaced only with `overwrite`.
    """
    _check_settings(batch_size, max_length, tolerance, threads)
    source = str(model) if isinstance(model, (str, os.PathLike)) else getattr(getattr(model, "config", None),
                                                                               "_name_or_path", None) or None
    target = check_folder(out, {"--model": source}, overwrite=overwrite, kind=DEPLOY_KIND, name="--out",
                          flag="--overwrite")
    runtimes = [get_runtime(runtime)] if runtime != "auto" else installed(log)
    model, tokenizer = _classifier(model, tokenizer, max_length)
    calibration, held_out = _split_batches(data, model, tokenizer, split, batch_size, max_length, log)
    timing = _timing_batch(held_out, tokenizer, batch_size, max_length)
    threads = threads or torch.get_num_threads()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.variants.", dir=target.parent) as scratch:
        failed: dict[str, str] = {}
        variants = _build_all(model, tokenizer, runtimes, Path(scratch), calibration, log, failed)
        sessions = {name: v.runtime.load(v.folder, v.precision, threads) for name, v in variants.items()}
        reference = torch_session(model)
        if REFERENCE not in sessions:  # a forced runtime is still timed against torch fp32, as a baseline
            sessions = {REFERENCE: reference, **sessions}
        rows = _compare(sessions, held_out, [reference(b) for b in held_out], tolerance, variants)
        rows = _time(sessions, rows, timing, threads, repeats, min_time)
        chosen = _choose(rows, variants, tolerance, log)
        manifest = _manifest(rows, chosen, variants[chosen["variant"]], tolerance, batch_size, max_length, threads,
                             len(calibration), failed)
        _publish(target, variants[chosen["variant"]].folder, manifest, source, overwrite)
    deployment = Deployment(target, manifest)
    log("\n".join(deployment.table()))
    log(f"deployed {chosen['variant']} to {target}")
    return deployment


# --- inputs ----------------------------------------------------------------------------------------------------

def _classifier(model, tokenizer, max_length: int) -> tuple[nn.Module, object]:
    """(an fp32 copy of the sequence classifier, its tokenizer) for a model or a folder."""
    import copy

    from .models import load_tokenizer
    from .task import check_max_length, task_model

    if isinstance(model, (str, os.PathLike)):
        task = task_model(str(model), on_bare="refuse", max_length=max_length, progress=False, task=SEQUENCE)
        model, tokenizer = task.model, tokenizer or task.tokenizer
    elif not isinstance(model, nn.Module):
        raise DeepCutsError(f"deploy takes a classifier (nn.Module) or its folder, got {type(model).__name__}")
    else:
        source = getattr(model.config, "_name_or_path", None)
        if tokenizer is None and source and os.path.isdir(source):
            tokenizer = load_tokenizer(source)
        check_max_length(max_length, model.config, type(model).__name__)
        model = copy.deepcopy(model)
    if model_task(model) is not task_named(SEQUENCE):
        raise DeepCutsError(f"deploy supports sequence classifiers, not {type(model).__name__}; deploy a model with a "
                            "sequence-classification head")
    if int(getattr(model.config, "num_labels", 0)) < 2:
        raise DeepCutsError("deploy compares predicted classes, so it needs a classifier with 2 or more labels; a "
                            "regression head (num_labels=1) is not supported")
    if tokenizer is None:
        raise DeepCutsError("deploy writes the tokenizer beside the model: pass tokenizer=, or deploy a model folder")
    return model.float().eval(), tokenizer


def _check_settings(batch_size: int, max_length: int, tolerance: float, threads: int | None) -> None:
    from .scoring.options import whole_number

    whole_number("batch_size", batch_size, minimum=1)
    whole_number("max_length", max_length, minimum=2)
    if threads is not None:
        whole_number("threads", threads, minimum=1)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 1:
        raise DeepCutsError(f"tolerance is the share of held-out predictions allowed to differ from torch fp32: a "
                            f"number in [0, 1], e.g. 0.01; got {tolerance!r}")


def _split_batches(data, model: nn.Module, tokenizer, split: str, batch_size: int, max_length: int,
                   log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """(calibration batches, held-out batches) of `data`: its shuffled examples, the first up to
    CALIBRATION_EXAMPLES for calibration and the next up to HELD_OUT_EXAMPLES held out (both halves of a
    small data set; the same batches for both when it makes a single batch, which is said)."""
    if isinstance(data, str):
        from .data import encode_labels, load_dataset, make_batches

        dataset = encode_labels(load_dataset(data, split), model.config)
        batches = make_batches(dataset, tokenizer, batch_size=batch_size, max_length=max_length, shuffle=True,
                               seed=0, limit=CALIBRATION_EXAMPLES + HELD_OUT_EXAMPLES)
    elif isinstance(data, Sequence) and data and all(isinstance(b, Mapping) and "input_ids" in b for b in data):
        batches = list(data)
    else:
        raise DeepCutsError("data must be labelled data (a file, folder, 'rotten_tomatoes' or a hub name) or a "
                            "non-empty list of tokenized batches with input_ids")
    batches = [{k: v for k, v in b.items() if k in (*INPUTS, "labels")} for b in batches]
    if len(batches) == 1:
        log("note: the data makes one batch, so int8 is calibrated on the rows it is checked on; give more data")
        return batches, batches
    rows = np.cumsum([len(b["input_ids"]) for b in batches])
    cut = int(min(len(batches) // 2, max(1, np.searchsorted(rows, CALIBRATION_EXAMPLES, side="right"))))
    return batches[:cut], batches[cut:]


def _timing_batch(held_out: list[dict], tokenizer, batch_size: int, max_length: int) -> dict[str, np.ndarray]:
    """`batch_size` rows of `max_length` tokens: the held-out rows, repeated as needed, padded to `max_length`
    (the padding still runs through the encoder, as it does when a server pads to a fixed length)."""
    rows = [{k: np.asarray(v.cpu() if hasattr(v, "cpu") else v)[i] for k, v in b.items() if k in INPUTS}
            for b in held_out for i in range(len(b["input_ids"]))]
    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    out = {}
    for name in rows[0]:
        table = np.full((batch_size, max_length), pad if name == "input_ids" else 0, dtype=np.int64)
        for i in range(batch_size):
            value = rows[i % len(rows)][name][:max_length]
            table[i, :len(value)] = value
        out[name] = table
    return out


# --- build, check, time ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Variant:
    runtime: Runtime
    precision: str
    folder: Path
    build_s: float


def _build_all(model: nn.Module, tokenizer, runtimes: list[Runtime], scratch: Path, calibration: list[dict],
               log: Callable[[str], None], failed: dict[str, str]) -> dict[str, _Variant]:
    """Every precision of every runtime, built into its own folder under `scratch`; 'runtime precision' -> it. A
    variant its runtime cannot build (OpenVINO's converter refuses a layer left with no heads) is left out with
    one line and listed in `failed` (name -> the error's first line); torch fp32, the reference, must build."""
    feeds = [feeds_of(b, [n for n in INPUTS if n in b]) for b in calibration]
    variants = {}
    for runtime in runtimes:
        for precision in runtime.precisions():
            name = f"{runtime.name} {precision}"
            folder = scratch / name.replace(" ", "-")
            folder.mkdir()
            start = time.perf_counter()
            try:
                runtime.build(model, tokenizer, precision, folder, feeds)
            except Exception as e:  # noqa: BLE001 - any runtime's own error leaves that variant out
                if name == REFERENCE:
                    raise
                failed[name] = first_line(f"{type(e).__name__}: {e}")
                log(f"skipped {name}: it could not be built ({failed[name]})")
                continue
            variants[name] = _Variant(runtime, precision, folder, time.perf_counter() - start)
            log(f"built {name} in {variants[name].build_s:.1f} s")
    return variants


def _compare(sessions: dict[str, Session], batches: list[dict], reference: list[np.ndarray], tolerance: float,
             candidates: Mapping[str, object]) -> list[dict]:
    """Per variant: the share of held-out rows whose predicted class equals torch fp32's, the largest logit
    difference, the accuracy where the batches have labels, and whether it is within `tolerance`; a session that
    is not one of the `candidates` is the torch fp32 baseline, timed but never chosen."""
    labels = [np.asarray(b["labels"]) for b in batches] if all("labels" in b for b in batches) else None
    want = np.concatenate([r.argmax(-1) for r in reference])
    rows = []
    for name, session in sessions.items():
        logits = [session(b) for b in batches]
        got = np.concatenate([x.argmax(-1) for x in logits])
        diff = max(float(np.abs(x.astype(np.float64) - r).max()) for x, r in zip(logits, reference))
        agreement = float((got == want).mean())
        rows.append({"variant": name, "candidate": name in candidates, "agreement": agreement,
                     "max_logit_diff": diff, "rows": int(want.size),
                     "accuracy": None if labels is None else float((got == np.concatenate(labels)).mean()),
                     "accepted": bool(np.isfinite(diff) and agreement >= 1 - tolerance)})
    return rows


class _Timed:
    """A session as `benchmarking.latency` times a runner: one pass, in milliseconds."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def time_ms(self, feed: Feeds) -> float:
        start = time.perf_counter()
        self.session(feed)
        return (time.perf_counter() - start) * 1e3


def _time(sessions: dict[str, Session], rows: list[dict], feed: dict[str, np.ndarray], threads: int, repeats: int,
          min_time: float) -> list[dict]:
    """`rows` with each variant's latency on `feed`: warm-up, then interleaved rounds (one pass of each variant
    per round) until each has `repeats` passes and `min_time` seconds have passed; median, quartiles, IQR."""
    from .benchmarking.latency import (STEADY_SPREAD, STEADY_WINDOW, _sample, load_average, load_warnings,
                                       noise_warning, sample_stats, spread, steady, steady_rule, warm_up)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timed = [_Timed(s) for s in sessions.values()]
        warm = warm_up([lambda r=runner: r.time_ms(feed) for runner in timed], minimum=WARMUP)
        load_before = load_average()
        samples = _sample(timed, [feed] * len(timed), repeats, min_time)
        load_after = load_average()
    finally:
        torch.set_num_threads(before)
    base = None
    for row, times in zip(rows, samples):
        stats = sample_stats(times)
        row.update({k: stats[k] for k in ("median_ms", "q1_ms", "q3_ms", "iqr_ms")}, passes=len(times))
        base = base or stats["median_ms"]  # the first variant is torch fp32
        row["speedup"] = base / stats["median_ms"]
        row["warnings"] = ([noise_warning(row["variant"], stats["median_ms"], stats["iqr_ms"])]
                           if stats["iqr_ms"] > 0.1 * stats["median_ms"] else [])
    for row, times in zip(rows, warm):
        row["warmup"] = {"rounds": len(times), "steady": steady(times)}
        if not steady(times):
            row["warnings"].append(f"unsteady warm-up: {row['variant']}'s last passes still differ by "
                                   f"{spread(times[-STEADY_WINDOW:]):.0%} (> {STEADY_SPREAD:.0%}) after {len(times)} rounds")
    rows[0]["warnings"] += load_warnings(load_before, load_after, os.cpu_count())
    rows[0]["warmup_rule"] = steady_rule(WARMUP)
    return rows


def _choose(rows: list[dict], variants: Mapping[str, object], tolerance: float, log: Callable[[str], None]) -> dict:
    """The fastest accepted variant; one line for each rejected one."""
    for row in rows:
        if row["variant"] in variants and not row["accepted"]:
            row["rejected"] = (f"predictions agree with {REFERENCE} on {row['agreement']:.1%} of {row['rows']} "
                               f"held-out rows, below {1 - tolerance:.1%} (tolerance {tolerance:g})")
            log(f"rejected {row['variant']}: {row['rejected']}")
    accepted = [r for r in rows if r["variant"] in variants and r["accepted"]]
    if not accepted:
        raise DeepCutsError(f"no variant agrees with {REFERENCE} within tolerance {tolerance:g}; nothing was "
                            "written: raise --tolerance, or deploy with --runtime torch")
    chosen = min(accepted, key=lambda r: r["median_ms"])
    chosen["chosen"] = True
    return chosen


# --- output ----------------------------------------------------------------------------------------------------

def _manifest(rows: list[dict], chosen: dict, variant: _Variant, tolerance: float, batch_size: int,
              max_length: int, threads: int, calibration_batches: int, failed: dict[str, str]) -> dict[str, Any]:
    """The contents of deploy.json."""
    from .machine import cpu_flags, describe_cpu, machine_info

    info = machine_info()
    flags = cpu_flags()
    return {
        "runtime": variant.runtime.name, "precision": variant.precision,
        "files": sorted(os.listdir(variant.folder)),
        "latency_ms": {k[:-3]: chosen[k] for k in ("median_ms", "q1_ms", "q3_ms", "iqr_ms")},
        "speedup_vs_torch_fp32": chosen["speedup"],
        "batch_size": batch_size, "max_length": max_length, "threads": threads,
        "agreement": {k: chosen[k] for k in ("agreement", "max_logit_diff", "rows", "accuracy")},
        "reference": REFERENCE, "reference_accuracy": rows[0]["accuracy"], "tolerance": tolerance,
        "calibration_batches": calibration_batches,
        "variants": rows,
        "failed_variants": failed,
        "machine": {"cpu": info["processor"], "isa": info["isa"], "flags": [f for f in ISA_FLAGS if f in flags],
                    "logical_cpus": info["logical_cpus"], "platform": info["platform"],
                    "allocator": info["allocator"],
                    "description": describe_cpu().rsplit(",", 1)[0] + f", {threads} threads"},
        "versions": {p: _installed_version(p) for p in VERSIONS},
    }


def _installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _publish(target: Path, folder: Path, manifest: dict, source: str | None, overwrite: bool) -> None:
    """Write the chosen artifact's files and deploy.json into `target` atomically; with `overwrite`, the files an
    earlier deployment there wrote that this one does not write again are removed first (only those)."""
    with write_folder(target, kind=DEPLOY_KIND, overwrite=overwrite, inputs={"--model": source}, name="--out",
                      flag="--overwrite") as tmp:
        for entry in os.listdir(folder):
            shutil.move(str(folder / entry), str(tmp / entry))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        earlier = read_manifest(target) if overwrite and target.is_dir() else None
        for entry in set((earlier or {}).get("files", [])) - set(os.listdir(tmp)):
            path = target / entry
            if os.path.lexists(path):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def variant_table(manifest: dict) -> list[str]:
    """Markdown lines of a deploy.json's variants: latency, speedup over torch fp32, agreement, accuracy."""
    m = manifest
    lines = [f"{m['machine']['description']}; batch {m['batch_size']} x {m['max_length']} tokens",
             "| variant | median ms | IQR ms | speedup vs torch fp32 | agrees with torch fp32 | max logit diff "
             "| accuracy | |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in m["variants"]:
        verdict = ("chosen" if r.get("chosen") else "baseline only" if not r["candidate"]
                   else "rejected" if not r["accepted"] else "")
        accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['variant']} | {r['median_ms']:.2f} | {r['iqr_ms']:.2f} | {r['speedup']:.2f}x "
                     f"| {r['agreement']:.2%} | {r['max_logit_diff']:.2g} | {accuracy} | {verdict} |")
    return (lines + [f"not built: {name} ({why})" for name, why in m.get("failed_variants", {}).items()]
            + [f"warning: {w}" for r in m["variants"] for w in r["warnings"]])


# --- loading ---------------------------------------------------------------------------------------------------

class Deployed:
    """A deployed folder, run by its runtime: call it on texts (or text pairs) or on tokenizer outputs for the
    logits; `predict` gives the label names."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        from transformers import AutoConfig

        from .models import load_tokenizer

        self.folder = Path(folder)
        path = self.folder / MANIFEST_FILE
        if not path.is_file():
            raise DeepCutsError(f"{self.folder} has no {MANIFEST_FILE}: give a folder written by `deepcuts deploy` "
                                "/ dc.deploy")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        self.runtime = RUNTIMES.get(self.manifest.get("runtime"))
        if self.runtime is None:
            raise DeepCutsError(f"{path} names runtime {self.manifest.get('runtime')!r}, which this deepcuts-fast "
                                f"does not know (it knows {', '.join(RUNTIMES)}); upgrade deepcuts-fast")
        get_runtime(self.runtime.name)  # refuses one that is not installed, naming the extra
        self.precision = self.manifest["precision"]
        self.config = AutoConfig.from_pretrained(self.folder)
        self.tokenizer = load_tokenizer(str(self.folder))
        self.session = self.runtime.load(self.folder, self.precision, threads or self.manifest.get("threads")
                                         or torch.get_num_threads())

    def __call__(self, inputs: str | Sequence[str] | Mapping[str, Any], pairs: str | Sequence[str] | None = None,
                 ) -> np.ndarray:
        """fp32 logits (batch, labels) of texts (with `pairs` as second segments) or of tokenizer outputs."""
        if isinstance(inputs, Mapping):
            return self.session(inputs)
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        pairs = [pairs] if isinstance(pairs, str) else pairs
        batch = self.tokenizer(texts, pairs, padding=True, truncation=True,
                               max_length=self.manifest.get("max_length"), return_tensors="np")
        return self.session(batch)

    def predict(self, inputs: str | Sequence[str] | Mapping[str, Any],
                pairs: str | Sequence[str] | None = None) -> list[str]:
        """The label name (config.id2label) of each row's highest logit."""
        return [self.config.id2label[int(i)] for i in self(inputs, pairs).argmax(-1)]


def load_deployed(folder: str | os.PathLike, threads: int | None = None) -> Deployed:
    """The deployment in `folder` (from `deploy`), loaded in its runtime and precision with `threads` threads
    (default: as it was timed)."""
    return Deployed(folder, threads)
