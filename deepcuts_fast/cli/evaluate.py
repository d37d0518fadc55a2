"""`deepcuts eval`: accuracy and loss (MSE for regression) of a model, or of an .onnx file from `deepcuts export`
under onnxruntime, on a data split, with the precision it ran in."""
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
    return e


def run(args: argparse.Namespace) -> int:
    """Evaluate --model on --split of --data and print the metrics and the dtype it ran in."""
    from ..data import make_batches
    from ..models import model_device
    from ..precision import choose
    from ..train import evaluate

    if loading.is_onnx_file(args.model):
        return _eval_onnx(args)
    model, tokenizer, dataset = loading.model_and_data(args, args.split)
    batches = make_batches(dataset, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = evaluate(model, batches, dtype=args.dtype, progress=not args.quiet)
    _print_eval(args, result, choose("infer", model_device(model), args.dtype).name)
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
    dataset = encode_labels(load_dataset(args.data, args.split), onnx.config)
    batches = make_batches(dataset, onnx.tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = onnx.evaluate(batches, progress=not args.quiet)
    output = onnx.session.get_outputs()[0].type
    _print_eval(args, result, "int8" if onnx_quantized(args.model) else {"tensor(float16)": "fp16"}.get(output, "fp32"))
    return 0


def _print_eval(args: argparse.Namespace, result, dtype: str) -> None:
    """Print the metrics and the dtype the evaluation ran in, as JSON or as one line."""
    if args.json:
        print(json.dumps({**result.to_dict(), "dtype": dtype}))
    else:
        per_example = ("predictions", "labels")  # in the JSON form only
        metrics = {**{k: v for k, v in result.to_dict().items() if v is not None and k not in per_example},
                   "dtype": dtype}
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


COMMAND = Command("eval", add_parser, run, position=2)
