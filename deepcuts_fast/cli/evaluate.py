"""`deepcuts eval`: the metrics of a sequence classifier's task (accuracy, macro-F1 and loss; MSE and Pearson for
regression) of a model, or of an .onnx file from `deepcuts export` under onnxruntime, on a data split, with the
precision it ran in; with --baseline, how well a slim embedding model keeps its dense model's embeddings
(`deepcuts_fast.embedding_metrics`). Data files carry one label per text, so a token-classification or QA model is
refused with what evaluates it instead (`dc.evaluate` on batches carrying its labels)."""
from __future__ import annotations

import argparse
import json

from ..errors import DeepCutsError
from . import loading
from .parsing import Command, add_common


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `eval` sub-parser and its flags."""
    e = sub.add_parser("eval", help="accuracy / loss of a model (or of an .onnx file from `deepcuts export`) on a "
                                    "data split")
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
    _check_file_task(_saved_config(args.model), args.model)
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
    _check_file_task(onnx.config, args.model)
    dataset = encode_labels(load_dataset(args.data, args.split), onnx.config)
    batches = make_batches(dataset, onnx.tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = onnx.evaluate(batches, progress=not args.quiet)
    output = onnx.session.get_outputs()[0].type
    _print_eval(args, result, "int8" if onnx_quantized(args.model) else {"tensor(float16)": "fp16"}.get(output, "fp32"))
    return 0


def _saved_config(name: str):
    """The config of --model, None where it cannot be read (loading the model then says why) or for the packaged
    task model, a sequence classifier."""
    from ..models import load_config
    from ..task import TASK_MODEL_ALIAS

    if name == TASK_MODEL_ALIAS:
        return None
    try:
        return load_config(name)
    except DeepCutsError:
        return None


def _check_file_task(config, name: str) -> None:
    """Refuse a model saved with another task's head than a sequence classifier's: data files carry one label per
    text, its labels are per token or answer positions, and files holding those are not supported yet."""
    from ..models import saved_head
    from ..tasks import SEQUENCE

    try:
        saved = None if config is None else saved_head(config, name)
    except DeepCutsError:  # a refused task: loading the model says why
        return
    if saved is None or saved.name == SEQUENCE:
        return
    keys = " and ".join(f"`{k}`" for k in saved.labels)
    shape = "per token, shaped (batch, tokens), -100 where a token has none" if saved.per_token else \
        "per example, shaped (batch,)"
    classes = "/".join(getattr(config, "architectures", None) or []) or "its saved head"
    raise DeepCutsError(f"model {name!r} ({classes}) is a {saved.name} model, and data files carry one label per "
                        f"text (a sequence classifier's): evaluating a {saved.name} model on file data is not supported yet; "
                        f"evaluate it in Python with dc.evaluate(model, batches), the batches carrying {keys} "
                        f"{shape}")


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
