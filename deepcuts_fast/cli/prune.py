"""`deepcuts prune`: heads and FFN neurons removed without retraining, by the retraining-free pipeline on --data
(`dc.prune_without_retraining`) or by a plan from a --scores file (`dc.prune_from_scores`); writes the slim folder
and says which way ran, and how the slim model's metric compares with the dense model's on the held-out split of
--data where it has one. Which options each way takes is the library's rule (`pipeline.check_prune_options`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

from ..errors import DeepCutsError
from ..locks import output_lock
from ..outputs import check_folder
from ..pipeline import DEFAULT_CRITERION
from . import loading
from .flags import flag_setting
from .parsing import DATA_HELP, DTYPE_HELP, OBJECTIVE_HELP, Command, criterion_help

CALIBRATION_BATCH = 16  # --batch-size for the calibration draw when not given
LATENCY_BATCH = 32  # --batch-size for a --speedup plan's latency when not given
HELD_OUT_SPLITS = ("test", "validation")  # the split the dense and slim models are compared on: the first there is


class HeldOut(NamedTuple):
    """The held-out batches the dense and slim models are compared on and their split, or why there are none."""

    split: str | None = None
    batches: list | None = None
    skipped: str | None = None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `prune` sub-parser and its flags."""
    from ..pipeline import METHODS
    from ..planning import ALLOCATIONS
    from ..planning.budget import SCOPES
    from ..precision import CHOICES as DTYPE_CHOICES
    from ..pruning.iterative import SELECTIONS
    from ..scoring.objective import OBJECTIVES
    from ..task import TASK_MODEL_ALIAS

    p = sub.add_parser("prune", help="prune heads and FFN neurons without retraining (the whole pipeline on --data, "
                                     "or a plan from a --scores file) and write a physically smaller model folder")
    p.add_argument("--model", default=TASK_MODEL_ALIAS, help="the model to prune (folder or alias); with --scores, "
                                                             "the one the scores were computed on")
    p.add_argument("--data", default=None, metavar="DATA",
                   help=f"calibration data, train split: {DATA_HELP}, or plain text (.txt, one text a line). Without --scores the retraining-free "
                        "pipeline scores, allocates the FLOP budget against Fisher, rearranges and reconstructs on "
                        "it; with --scores it is the reconstruction data")
    p.add_argument("--scores", default=None, metavar="FILE",
                   help="plan from this `deepcuts score --granularity unit` file instead of scoring (then no "
                        "Fisher allocation or rearrangement); one of --scores / --data is required")
    p.add_argument("--criterion", default=None, metavar="NAME",
                   help=criterion_help("what the pipeline scores with, besides Fisher (default: " + ", ".join(
                       f"{name} with the {method} method" for method, name in DEFAULT_CRITERION.items())
                       + "; not with --scores)"))
    for target, what in (("flops", "FLOPs"), ("params", "unit parameters"), ("heads", "heads"),
                         ("neurons", "FFN neurons")):
        only = "" if target == "flops" else "; needs --scores"
        p.add_argument(f"--keep-{target}", type=float, default=None, metavar="F",
                       help=f"fraction of the encoder's {what} to keep, in [0, 1]{only}")
    p.add_argument("--speedup", type=float, default=None, metavar="X",
                   help="a latency budget instead: the slim model should run X times as fast as the dense one "
                        "(X >= 1) at --batch-size and --seq-len on --device in --dtype, as predicted by a per-layer "
                        "latency table measured once on this machine and cached; needs --scores")
    p.add_argument("--drop-layers", type=int, default=0, metavar="N",
                   help="also remove the N encoder layers whose removal changes the model's outputs on --data least "
                        "(dc.layer_importance), inside the same budget: fewer layers also drop their LayerNorms, "
                        "residual adds and launches, which width pruning cannot (default 0: none)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length the FLOP budget is counted at (with "
                                                            "--speedup: the latency is measured at)")
    p.add_argument("--device", default=None,
                   help="with --speedup: the device the latency is measured and planned for, cpu or cuda "
                        "(default: cpu)")
    p.add_argument("--scope", choices=SCOPES, default="global",
                   help="spend the budget over all layers or per layer (layer needs --scores)")
    p.add_argument("--min-heads", type=int, default=0, help="heads kept in every layer at least")
    p.add_argument("--min-neurons", type=int, default=0, help="FFN neurons kept in every layer at least")
    p.add_argument("--multiple-of", type=int, default=None,
                   help="round FFN widths to a multiple, e.g. 8 or 64 (needs --scores; default: 1, or 16 with "
                        "--speedup)")
    p.add_argument("--allocation", default="auto", choices=ALLOCATIONS,
                   help="with --scores: how layers and unit types are compared; auto = by the Fisher scores the file "
                        "carries (scored with data), else each layer's scores normalised; raw = the summed scores "
                        "as they are (a baseline)")
    p.add_argument("--no-rearrange", action="store_true",
                   help="pipeline: keep the searched mask instead of rearranging each layer's against Fisher")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="skip the least-squares refit of each layer's output projections on --data (done by "
                        "default whenever --data is given)")
    p.add_argument("--method", choices=METHODS, default="one-shot",
                   help="pipeline: one-shot = search, rearrange, prune, then refit; iterative = keep the search's "
                        "per-layer counts, choose the units bottom-up by the output error they leave and refit each "
                        "sublayer before the next (not with --no-rearrange / --no-reconstruct)")
    p.add_argument("--selection", choices=SELECTIONS, default="output",
                   help="pipeline, --method iterative: which units each sublayer keeps: by the output error their "
                        "removal leaves, by --criterion's scores, or heads by output error and FFN neurons by "
                        "--criterion's scores")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help=f"pipeline: {OBJECTIVE_HELP} (not with --scores)")
    p.add_argument("--calibration-examples", type=int, default=512, metavar="N",
                   help="examples of --data to score and reconstruct on (fewer over-fit the FFN output projections); "
                        "also the most examples of its held-out split (test, else validation) the dense and slim "
                        "models are evaluated on, in fp32")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"calibration examples per batch (default: {CALIBRATION_BATCH}); with --speedup also the "
                        f"batch size the latency is measured and planned at (default: {LATENCY_BATCH})")
    p.add_argument("--max-length", type=int, default=64, help="tokens per calibration example")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw from --data")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help=f"{DTYPE_HELP}. It applies to the scoring and reconstruction forwards, and with --speedup to "
                        "the latency the plan is made for")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder written by an earlier `deepcuts prune` (or an empty one)")
    return p


def run(args: argparse.Namespace) -> int:
    """Check the flags against the way they ask for, then --out, then prune and write the slim folder."""
    from ..pruning.io import MODEL_FOLDER_KIND

    _check_options(args)  # every flag combination is checked before anything loads
    out = Path(args.out)
    check_folder(out, {"--model": args.model, "--scores": args.scores, "--data": args.data},
                 overwrite=args.overwrite, kind=MODEL_FOLDER_KIND, name="--out", flag="--overwrite")
    with output_lock(out):
        return _prune(args, out)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse what the way the flags ask for (--scores: a plan from them; else the pipeline on --data) cannot
    honour, in the library's words and the flags' names, and --device without --speedup."""
    from ..models import resolve_device
    from ..pipeline import check_prune_options

    if args.scores is None and args.data is None:
        raise DeepCutsError("give --data DATA (the retraining-free pipeline scores, plans and reconstructs on it) "
                            "or --scores FILE (plan from a `deepcuts score --granularity unit` file), or both")
    check_prune_options(args.scores is not None, spell=flag_setting, **_library_options(args))
    if args.drop_layers < 0:
        raise DeepCutsError(f"--drop-layers is how many encoder layers to remove, 0 or more; got {args.drop_layers}")
    if args.drop_layers and args.data is None:
        raise DeepCutsError("--drop-layers chooses the layers to remove by how much each changes the model's outputs "
                            "on --data; give --data too")
    if args.speedup is None and args.device is not None:
        raise DeepCutsError("--device says where a --speedup plan's latency is measured; give --speedup X, or "
                            "drop --device")
    if args.speedup is not None:
        resolve_device(args.device or "cpu")  # an unknown or absent device fails before the model loads


def _library_options(args: argparse.Namespace) -> dict:
    """The prune flags as keyword arguments of `prune_without_retraining` / `prune_from_scores`, each path's
    included (`check_prune_options` refuses those the chosen path does not take)."""
    return dict(keep_flops=args.keep_flops, keep_params=args.keep_params, keep_heads=args.keep_heads,
                keep_neurons=args.keep_neurons, speedup=args.speedup, scope=args.scope, multiple_of=args.multiple_of,
                allocation=args.allocation, criterion=args.criterion, method=args.method, selection=args.selection,
                objective=args.objective, drop_layers=args.drop_layers or None,
                rearrange=not args.no_rearrange, reconstruct=not args.no_reconstruct)


def _prune(args: argparse.Namespace, out: Path) -> int:
    """`deepcuts prune` once its --out folder is checked and locked."""
    from ..data import make_batches
    from ..pipeline import prune_from_scores, prune_without_retraining
    from ..pruning import save_pretrained
    from ..scoring import Scores

    scores = None if args.scores is None else Scores.load(args.scores)
    batches = None
    if args.data is None:
        model, tokenizer = loading.classifier(args, None)
    else:
        model, tokenizer, dataset = loading.model_and_data(args, "train", labels=args.objective == "labels")
        batches = make_batches(dataset, tokenizer, batch_size=args.batch_size or CALIBRATION_BATCH,
                               max_length=args.max_length, shuffle=True, seed=args.seed, limit=args.calibration_examples)
    held_out = _held_out(args, model, tokenizer)
    dense = None if held_out.batches is None else _evaluate(model, held_out.batches)
    options = _library_options(args)
    if scores is None:
        slim, plan, info = prune_without_retraining(
            model, batches, args.keep_flops, criterion=args.criterion, seq_len=args.seq_len,
            rearrange=options["rearrange"], reconstruct=options["reconstruct"], dtype=args.dtype,
            min_heads=args.min_heads, min_neurons=args.min_neurons, seed=args.seed, progress=not args.quiet,
            method=args.method, selection=args.selection, objective=args.objective or "auto",
            drop_layers=options["drop_layers"])
    else:
        if args.speedup is not None and not args.quiet:
            print("deepcuts: note: --speedup plans on a latency table of this machine, measured on first use "
                  "(a minute or so for a BERT-base at batch 32 on a CPU) and cached", file=sys.stderr)
        plan_options = {k: options[k] for k in ("keep_flops", "keep_params", "keep_heads", "keep_neurons", "speedup",
                                                "scope", "multiple_of", "allocation", "drop_layers")}
        slim, plan, info = prune_from_scores(
            model, scores, batches, reconstruct=options["reconstruct"], dtype=args.dtype, seq_len=args.seq_len,
            min_heads=args.min_heads, min_neurons=args.min_neurons, batch_size=args.batch_size or LATENCY_BATCH,
            device=args.device or "cpu", **plan_options)
    save_pretrained(slim, out, tokenizer=tokenizer, plan=plan, overwrite=args.overwrite)
    summary = _summary(args, model, slim, plan, info, batches)
    slim_result = None if dense is None else _evaluate(slim, held_out.batches)
    summary["held_out"] = _held_out_summary(held_out, dense, slim_result)
    if args.json:
        print(json.dumps(summary))
    else:
        print(plan.summary())
        print(_summary_line(summary))
        print(_held_out_line(summary["held_out"]))
    return 0


def _held_out(args: argparse.Namespace, model, tokenizer) -> HeldOut:
    """The batches of the held-out split of --data (at most --calibration-examples examples, --batch-size and
    --max-length as for calibration), or why the dense and slim models are not compared: no --data, an untrained
    head, no held-out split, or a split without labels of the model's task."""
    from ..data import TextDataset, encode_task_data, load_task_data, make_batches
    from ..scoring.objective import head_state
    from ..tasks import SEQUENCE, task_of_head

    if args.data is None:
        return HeldOut(skipped="no --data, so no held-out split to evaluate on")
    if head_state(model) != "trained":
        return HeldOut(skipped="the model's classifier head is untrained, so its predictions mean nothing")
    split = _held_out_split(args.data)
    if split is None:
        return HeldOut(skipped=f"--data {args.data} has no held-out split ({' or '.join(HELD_OUT_SPLITS)}): one "
                               "data file is all calibration data; give a folder with train and test files to "
                               "compare on held-out data")
    task = task_of_head(model).name
    try:
        dataset = load_task_data(args.data, split, task, "the model", require_labels=task != SEQUENCE)
        if isinstance(dataset, TextDataset) and not dataset.labelled:
            return HeldOut(split, skipped=f"the {split!r} split of --data has no labels")
        dataset = encode_task_data(dataset, model.config)
    except DeepCutsError as e:
        return HeldOut(split, skipped=f"the {split!r} split of --data cannot be evaluated on: {e}")
    return HeldOut(split, make_batches(dataset, tokenizer, batch_size=args.batch_size or CALIBRATION_BATCH,
                                       max_length=args.max_length, limit=args.calibration_examples,
                                       sort_by_length=True))


def _held_out_split(data: str) -> str | None:
    """The first of `HELD_OUT_SPLITS` that --data has as a split of its own: the embedded data's test split, a
    folder's `<split>` file, a hub dataset's split; None for one data file, whose every split is the file itself."""
    from ..data import EMBEDDED_ALIASES, EMBEDDED_SPLITS, FILE_SUFFIXES, load_dataset

    if data.lower() in EMBEDDED_ALIASES:
        return next(s for s in HELD_OUT_SPLITS if s in EMBEDDED_SPLITS)
    path = Path(data).expanduser()
    if path.is_dir():
        return next((s for s in HELD_OUT_SPLITS if any((path / f"{s}{x}").is_file() for x in FILE_SUFFIXES)), None)
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES:
        return None
    for split in HELD_OUT_SPLITS:  # a hub dataset: the first split that loads
        try:
            load_dataset(data, split, require_labels=False)
            return split
        except DeepCutsError:
            continue
    return None


def _evaluate(model, batches: list):
    """The model's metrics on the held-out batches, in fp32 so the dense and slim numbers compare."""
    from ..train import evaluate

    return evaluate(model, batches, dtype="fp32")


def _held_out_summary(held_out: HeldOut, dense, slim) -> dict:
    """The held-out comparison for the summary: the split, examples, the headline metric of each model and all
    their metrics and losses; or why it was skipped."""
    if held_out.skipped is not None:
        return {"split": held_out.split, "skipped": held_out.skipped}
    per_example = ("predictions", "labels")
    return {"split": held_out.split, "n": dense.n, "metric": dense.headline, "dense": dense.score,
            "slim": slim.score, "dtype": "fp32",
            **{f"{name}_metrics": {k: v for k, v in r.to_dict().items() if k not in per_example}
               for name, r in (("dense", dense), ("slim", slim))}}


def _held_out_line(h: dict) -> str:
    """One line: the slim model's held-out metric next to the dense model's, or why there is none."""
    if "skipped" in h:
        return f"held-out evaluation skipped: {h['skipped']}"
    if h["dense"] is None or h["slim"] is None:
        change = ""
    elif h["metric"] == "mse":  # an error, not a fraction: its change in its own unit
        change = f" ({h['slim'] - h['dense']:+.4f})"
    else:
        change = f" ({100 * (h['slim'] - h['dense']):+.2f} pt)"
    return (f"held-out {h['metric']}: dense {_value(h['dense'])} -> slim {_value(h['slim'])}{change} on {h['n']} "
            f"examples of {h['split']!r}")


def _value(metric: float | None) -> str:
    """A metric as the held-out line shows it (n/a where it is undefined, as a constant series' Pearson)."""
    return "n/a" if metric is None else f"{metric:.4f}"


def _summary(args: argparse.Namespace, model, slim, plan, info: dict, batches: list | None) -> dict:
    """What `deepcuts prune` did: the way that ran (pipeline or scores file), its inputs and steps, what it kept."""
    from ..flops import encoder_unit_params

    return {
        "out": str(args.out),
        "path": "scores" if args.scores is not None else "pipeline",
        "criterion": info["criterion"],
        "method": info.get("method"), "selection": info.get("selection"),
        "allocation": plan.target.get("allocation"),
        "scores": args.scores,
        "data": args.data,
        "calibration_examples": None if batches is None else sum(len(b["input_ids"]) for b in batches),
        "rearranged": info["rearranged"], "reconstructed": info["reconstructed"],
        "reconstructed_on": args.data if info["reconstructed"] else None,
        "heads": [len(h) for h in plan.heads],
        "ffn": [len(n) for n in plan.neurons],
        "dropped_layers": plan.dropped,
        "params": sum(p.numel() for p in slim.parameters()),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "unit_params_kept": encoder_unit_params(slim) / encoder_unit_params(model),
        "flops_kept": info["flops_kept"],  # both ways measure it at --seq-len
        "seq_len": args.seq_len,
        **{k: plan.target.get(k) for k in ("speedup", "predicted_speedup", "batch_size", "device", "dtype",
                                            "latency_table") if "speedup" in plan.target},
        "timings": info["timings"],
    }


def _summary_line(s: dict) -> str:
    """The text summary of a `deepcuts prune` run: which way ran, its steps, what it kept, and its timings."""
    if s["path"] == "pipeline":
        how = f"retraining-free pipeline ({s['criterion']} scores, Fisher-referenced allocation"
        if s.get("method") == "iterative":
            how += {"output": ", units chosen iteratively by output error",
                    "criterion": f", units chosen iteratively by {s['criterion']} scores",
                    "output-heads": f", heads chosen iteratively by output error, neurons by {s['criterion']} scores",
                    }[s.get("selection") or "output"]
        else:
            how += ", rearranged" if s["rearranged"] else ", not rearranged"
    else:
        how = f"plan from {s['scores']} ({s['criterion']} scores"
    how += f", reconstructed on {s['data']})" if s["reconstructed"] else ", not reconstructed)"
    if s["calibration_examples"]:
        how += f" on {s['calibration_examples']} calibration examples"
    timings = ", ".join(f"{step} {seconds:.2f}s" for step, seconds in s["timings"].items())
    speed = (f"; predicted {s['predicted_speedup']:.2f}x faster (asked {s['speedup']:g}x) at batch {s['batch_size']} "
             f"on {s['device']} {s['dtype']}, latency table {s['latency_table']}" if s.get("speedup") else "")
    return (f"{how}: kept {s['flops_kept']:.1%} of encoder FLOPs at seq {s['seq_len']}, {s['params']:,} of "
            f"{s['dense_params']:,} params{speed}; wrote {s['out']}\ntimings: {timings}")


COMMAND = Command("prune", add_parser, run, position=3)
