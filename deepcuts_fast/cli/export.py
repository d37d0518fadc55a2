"""`deepcuts export`: a model (dense or slim) as an .onnx file for deployment, checked against torch, optionally
optimized (fused attention) and int8-quantized, with its config and tokenizer in the FILE.d folder beside it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DeepCutsError
from ..outputs import check_file, check_folder
from . import loading
from .parsing import Command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `export` sub-parser and its flags."""
    from ..task import TASK_MODEL_ALIAS

    x = sub.add_parser("export", help="write a model (dense or slim) as an ONNX file for deployment, checked against "
                                      "torch; optionally optimized (fused attention) and int8-quantized")
    x.add_argument("--model", default=TASK_MODEL_ALIAS, help="the model to export (folder or alias)")
    x.add_argument("--out", required=True, metavar="FILE",
                   help="output .onnx file; config.json and the tokenizer files go to the folder FILE.d beside it")
    x.add_argument("--optimize", action="store_true",
                   help="write onnxruntime's transformer-optimized graph (fused attention, layer norms and GELU; "
                        "assumes right padding, the tokenizers' default)")
    x.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8: dynamic quantization (int8 weights, one scale per channel; activations quantized at "
                        "run time); its logits are not held to the fp32 tolerance: re-measure with `deepcuts eval "
                        "--model FILE`")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out file and its FILE.d folder")
    return x


def run(args: argparse.Namespace) -> int:
    """Check and lock --out and its FILE.d folder, export, and print what was written, what fused, and how far
    the logits are from torch's."""
    from ..export import SIDE_FOLDER_KIND, export, side_folder

    out = Path(args.out)
    if out.suffix != ".onnx" or loading.is_onnx_file(args.model):
        raise DeepCutsError(f"`deepcuts export` writes a model folder as an .onnx file: give --out FILE.onnx (got "
                            f"{args.out}) and --model a model folder or alias (got {args.model})")
    folder = side_folder(out)
    inputs = {"--model": args.model}
    check_file(out, inputs, overwrite=args.overwrite, name="--out", flag="--overwrite")
    check_folder(folder, inputs, overwrite=args.overwrite, kind=SIDE_FOLDER_KIND, name="the folder beside --out",
                 flag="--overwrite")
    with loading.output_locks([out, folder]):
        model, tokenizer = loading.classifier(args, None)
        result = export(model.float(), out, tokenizer, optimize=args.optimize, quantize=args.quantize,
                        overwrite=args.overwrite)
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


COMMAND = Command("export", add_parser, run, position=4)
