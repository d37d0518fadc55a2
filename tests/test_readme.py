"""The README's score -> plan -> prune -> save -> load -> benchmark example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_pruning_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "dc.prune(" in b and "dc.benchmark(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "slim-minilm" / "model.safetensors").is_file()
    assert (tmp_path / "slim-minilm.onnx").is_file()
    assert "slim" in namespace["report"].table()
