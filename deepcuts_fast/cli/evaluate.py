"""`deepcuts eval`: the metrics of a model's task on a data split, with the precision it ran in: a sequence
classifier's accuracy, macro-F1 and loss (MSE and Pearson for regression) on texts with labels, a tagger's entity F1
on a file of tagged words, a QA reader's exact match and F1 on a SQuAD file (`deepcuts_fast.data.load_task_data`),
or a sequence classifier exported to an .onnx file by `deepcuts export`, under onnxruntime; with --baseline, how well
a slim embedding model keeps its dense model's embeddings (`deepcuts_fast.embedding_metrics`)."""
from __future__ import annotations

import argparse
import json

from ..errors import DeepCutsError
from . import loading
from .parsing import Command, add_common


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `eval` sub-parser and its flags."""
    e = sub.add_parser("eval", help="the task's metrics of a model (accuracy, entity F1, QA exact match and F1), or "
                                    "of a classifier's .onnx file from `deepcuts export`, on a data split")
    add_common(e)
    model = next(a for a in e._actions if a.dest == "model")
    model.help += "; or an .onnx file written by `deepcuts export`, run with onnxruntime (its tokenizer and config " \
                  "from the FILE.d folder beside it, its precision as exported: --dtype does not apply)"
    e.add_argument("--split", default="test", help="data split to evaluate on")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N examples only")
    e.add_argument("--baseline", default=None, metavar="DENSE",
                   help="the dense model --model was pruned from: compare their pooled embeddings of the --split texts "
                        "(mean cosine, nearest-neighbour overlap, a logistic-regression probe) instead of the head's "
                        "accuracy; pooled as DENSE's sentence-transformers folder says, else the mean over the tokens")
    e.add_argument("--neighbours", type=int, default=10, help="with --baseline: k of the nearest-neighbour overlap@k")
    e.add_argument("--probe-split", default="train",
                   help="with --baseline and labelled data: the split each model's logistic-regression probe is fitted "
                        "on (its accuracy is measured on --split); 'none' skips the probe")
    e.add_argument("--probe-limit", type=int, default=None, help="with --baseline: fit the probe on the first N "
                                                                  "examples of --probe-split only")
    return e


def run(args: argparse.Namespace) -> int:
    """Evaluate --model on --split of --data and print the metrics and the dtype it ran in."""
    from ..data import make_batches
    from ..models import model_device
    from ..precision import choose
    from ..train import evaluate

    if args.baseline is not None:
        return _eval_embeddings(args)
    if loading.is_onnx_file(args.model):
        return _eval_onnx(args)
    model, tokenizer, dataset = loading.model_and_data(args, args.split)
    batches = make_batches(dataset, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = evaluate(model, batches, dtype=args.dtype, progress=not args.quiet)
    _print_eval(args, result, choose("infer", model_device(model), args.dtype).name)
    return 0


def _eval_embeddings(args: argparse.Namespace) -> int:
    """`deepcuts eval --model SLIM --baseline DENSE`: the embedding metrics of SLIM against DENSE on the --split
    texts, the probe fitted on --probe-split when the data is labelled, and the precision they ran in."""
    import sys

    from ..data import load_dataset, make_batches
    from ..embedding_metrics import evaluate_embeddings
    from ..task import task_model

    for flag, value in (("--neighbours", args.neighbours), ("--probe-limit", args.probe_limit)):
        if value is not None and value < 1:
            raise DeepCutsError(f"{flag} must be an integer >= 1, got {value}")
    if loading.is_onnx_file(args.model) or loading.is_onnx_file(args.baseline):
        raise DeepCutsError("--baseline compares two torch models' embeddings; pass model folders, not .onnx files")
    slim, dense = (task_model(name, on_bare="random-head", progress=not args.quiet, max_length=args.max_length)
                   for name in (args.model, args.baseline))
    if slim.tokenizer.get_vocab() != dense.tokenizer.get_vocab():
        raise DeepCutsError(f"--model {args.model} and --baseline {args.baseline} tokenize differently; compare a "
                            "slim model with the dense model it was pruned from")
    texts = load_dataset(args.data, args.split, require_labels=False)
    batching = dict(batch_size=args.batch_size, max_length=args.max_length, sort_by_length=True)
    probe = None
    if args.probe_split != "none" and texts.labelled:
        train = load_dataset(args.data, args.probe_split)
        if train.texts == texts.texts:
            raise DeepCutsError(f"--probe-split {args.probe_split} holds the same texts as --split {args.split} (a "
                                "single data file has no splits); pass data with separate split files, or "
                                "--probe-split none")
        probe = make_batches(train, dense.tokenizer, limit=args.probe_limit, **batching)
    elif args.probe_split != "none":
        print(f"deepcuts: note: --split {args.split} of {args.data} has no labels, so there is no probe; the "
              "embedding metrics need none", file=sys.stderr)
    batches = make_batches(texts, dense.tokenizer, limit=args.limit, **batching)
    result = evaluate_embeddings(slim.model, dense.model, batches, probe_train=probe, k=args.neighbours,
                                 dtype=args.dtype)
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


def _eval_onnx(args: argparse.Namespace) -> int:
    """`deepcuts eval --model FILE.onnx`: the file under onnxruntime on the split, tokenized by the tokenizer
    exported beside it, labels numbered as its config numbers them."""
    from ..benchmarking.runners import onnx_quantized
    from ..data import encode_labels, load_dataset, make_batches
    from ..export import OnnxClassifier

    if args.dtype != "auto":
        raise DeepCutsError(f"--dtype {args.dtype} does not apply to an ONNX file, which runs in the precision it was "
                            "exported in (int8 with `deepcuts export --quantize int8`); drop --dtype")
    onnx = OnnxClassifier(args.model)
    _check_onnx_task(onnx.config, args.model)
    dataset = encode_labels(load_dataset(args.data, args.split), onnx.config)
    batches = make_batches(dataset, onnx.tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = onnx.evaluate(batches, progress=not args.quiet)
    output = onnx.session.get_outputs()[0].type
    _print_eval(args, result, "int8" if onnx_quantized(args.model) else {"tensor(float16)": "fp16"}.get(output, "fp32"))
    return 0


def _check_onnx_task(config, name: str) -> None:
    """Refuse an .onnx file exported from a model with another task's head than a sequence classifier's: the file
    runner reads one row of logits per text; the model folder it came from is evaluated on its own task's data."""
    from ..models import saved_head
    from ..tasks import SEQUENCE

    try:
        saved = saved_head(config, name)
    except DeepCutsError:  # a refused task: loading the model says why
        return
    if saved is None or saved.name == SEQUENCE:
        return
    classes = "/".join(getattr(config, "architectures", None) or []) or "its saved head"
    raise DeepCutsError(f"{name!r} was exported from a {saved.name} model ({classes}), and an .onnx file is evaluated "
                        "as a sequence classifier (one row of logits per text); evaluate the model folder it was "
                        f"exported from instead: deepcuts eval --model FOLDER --data a {saved.name} data file")


def _print_eval(args: argparse.Namespace, result, dtype: str) -> None:
    """Print the task's metrics (its headline metric named) and the dtype the evaluation ran in, as JSON or as one
    line (and the result's note, where there is one, on a second line)."""
    if args.json:
        print(json.dumps({**result.to_dict(), "metric": result.headline, "dtype": dtype}))
        return
    per_example = ("predictions", "labels", "note")  # in the JSON form only, the note on its own line
    metrics = {**{k: v for k, v in result.to_dict().items() if v is not None and k not in per_example},
               "dtype": dtype}
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    if result.note is not None:
        print(f"note: {result.note}")


COMMAND = Command("eval", add_parser, run, position=2)
