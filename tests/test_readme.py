"""Every code block of the README runs as written: each Python block is executed (in a fresh folder,
on the real embedded model and data), and every `deepcuts` command line of the shell blocks is
accepted by the CLI's parser (flags and choices exist as documented)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deepcuts_fast.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SHELL_BLOCKS = re.findall(r"```(?:bash|sh)\n(.*?)```", TEXT, flags=re.S)


def _commands() -> list[str]:
    """Every `deepcuts ...` line of the shell blocks, without its trailing comment and line continuations, with
    its optional `[...]` parts included."""
    lines = []
    for block in SHELL_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("deepcuts "):
                lines.append(re.sub(r"\[([^\]]*)\]", r"\1", line))  # optional parts [--flag X] included
    return lines


def test_the_readme_has_the_blocks_it_promises():
    assert len(PYTHON_BLOCKS) >= 3 and any("prune_without_retraining(" in b for b in PYTHON_BLOCKS)
    assert "minilm-rt" in PYTHON_BLOCKS[0] and len(_commands()) >= 5


@pytest.mark.slow
@pytest.mark.example  # the examples are the same on every CPU: the AVX2 run of the suite skips them
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index + 1}", "exec"), namespace)
    if "report" in namespace and "slim" in namespace:  # the deployment example wrote what it says
        assert (tmp_path / "slim-minilm" / "model.safetensors").is_file()
        assert (tmp_path / "slim-minilm.onnx").is_file()
        assert "slim" in namespace["report"].table()
    if "info" in namespace:
        assert abs(namespace["info"]["flops_kept"] - 0.5) < 0.05


@pytest.mark.parametrize("command", _commands())
def test_shell_command_is_accepted_by_the_cli(command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on an unknown flag or a bad choice, 0 for --help/--version
        assert e.code == 0, f"`{command}` is rejected by the CLI parser"
