"""Deployment export: a torch model as a checked ONNX file, one module per step (`graph` traces, `fusion` runs ONNX
Runtime's optimizer, `quantize` makes it int8, `check` compares it with torch), `runtime` runs the file, and
`to_onnx.export` chains them; another runtime or deploy step is one more module beside these."""
from .runtime import OnnxClassifier, onnx_session
from .side import REPORT_FILE, SIDE_FOLDER_KIND, side_folder
from .summary import OnnxExport
from .to_onnx import export

__all__ = ["OnnxClassifier", "OnnxExport", "REPORT_FILE", "SIDE_FOLDER_KIND", "export", "onnx_session", "side_folder"]
