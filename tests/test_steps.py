"""Resumable steps are keyed by the code they declare: the import scan, the fingerprint and the store's reuse."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deepcuts_fast.code_fingerprint import PACKAGE_ROOT, code_fingerprint, module_closure
from deepcuts_fast.job.steps import StepStore

# The portable pass (make test-portable) skips this file: resumable steps keyed by their code
pytestmark = pytest.mark.isa_independent

PRESENTATION = {"deepcuts_fast.job.report", "deepcuts_fast.job.plots", "deepcuts_fast.job.plot_style",
                "deepcuts_fast.job.structured_plots", "deepcuts_fast.job.run", "deepcuts_fast.cli",
                *(f"deepcuts_fast.cli.{p.stem}" for p in (PACKAGE_ROOT / "cli").glob("*.py"))}

# A small package shaped like this one: its __init__ re-exports a presentation module, `core` imports `sub.lazy`
# only inside a function, and `sub.lazy` takes a sibling module with `from .. import`.
FAKE = {
    "__init__.py": '"""Fake package."""\nfrom .report import render\n',
    "core.py": '"""Core."""\nfrom .util import double\n\n\ndef compute(x):\n    """Compute."""\n'
               '    from .sub.lazy import triple  # lazily\n    return triple(double(x))\n',
    "util.py": "def double(x):\n    return 2 * x\n",
    "sub/__init__.py": "",
    "sub/lazy.py": "from .. import util\n\n\ndef triple(x):\n    return 3 * util.double(x) // 2\n",
    "report.py": "from .core import compute\n\n\ndef render(x):\n    return str(compute(x))\n",
    "unrelated.py": "VALUE = 1\n",
}


def fake_package(base: Path, **edits: str) -> Path:
    """Write the fake package under `base`, `edits` replacing files (`sub__lazy` is sub/lazy.py), and return its root."""
    root = base / "fakepkg"
    for name, text in {**FAKE, **{k.replace("__", "/") + ".py": v for k, v in edits.items()}}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_scan_follows_lazy_imports_and_not_the_report(tmp_path):
    root = fake_package(tmp_path)
    assert module_closure(["fakepkg.core"], root) == ["fakepkg.core", "fakepkg.sub.lazy", "fakepkg.util"]
    assert module_closure(["fakepkg.sub"], root) == ["fakepkg.sub", "fakepkg.sub.lazy", "fakepkg.util"]
    assert "fakepkg.core" in module_closure(["fakepkg.report"], root)
    with pytest.raises(ValueError, match="fakepkg.nothing"):
        module_closure(["fakepkg.nothing"], root)


def test_a_registry_package_stands_for_every_module_it_collects(tmp_path):
    def registry_package(base: Path, extra: str) -> Path:
        root = fake_package(base, core=FAKE["core.py"].replace("from .sub.lazy import triple", "from .sub import FOUND"))
        (root / "sub" / "__init__.py").write_text(
            '"""A registry."""\nimport importlib\nimport pkgutil\n\n'
            'FOUND = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]\n')
        (root / "sub" / "extra.py").write_text(extra)
        return root

    root = registry_package(tmp_path / "a", "VALUE = 3\n")
    assert {"fakepkg.sub.extra", "fakepkg.sub.lazy"} <= set(module_closure(["fakepkg.core"], root))
    edited = registry_package(tmp_path / "b", "VALUE = 4\n")
    assert code_fingerprint(["fakepkg.core"], edited) != code_fingerprint(["fakepkg.core"], root)
    assert {"deepcuts_fast.families.bert", "deepcuts_fast.scoring.criteria.smooth_cut"} <= set(
        module_closure(["deepcuts_fast.pipeline"]))


def test_scoring_closure_has_its_lazy_kernels_and_no_report():
    closure = module_closure(["deepcuts_fast.job.paper_mode", "deepcuts_fast.scoring"])
    # kernels/triton_kernels.py is imported only inside the kernel dispatchers' functions
    assert {"deepcuts_fast.kernels.triton_kernels", "deepcuts_fast.scoring.engine", "deepcuts_fast.train"} <= set(closure)
    assert not PRESENTATION & set(closure)


def test_every_job_step_declares_code_without_presentation_modules():
    declared = []
    for path in sorted((PACKAGE_ROOT / "job").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "store"):
                code = {k.arg: k.value for k in node.keywords}.get("code")
                assert code is not None, f"{path.name}:{node.lineno}: a step without code="
                declared.append(ast.literal_eval(code))
    assert len(declared) >= 11  # every step of job/run.py
    for names in declared:
        assert not PRESENTATION & set(module_closure(names)), names


def test_docstring_and_comment_edits_keep_the_fingerprint_and_code_edits_change_it(tmp_path):
    fingerprint = lambda root: code_fingerprint(["fakepkg.core"], root)  # noqa: E731
    original = fingerprint(fake_package(tmp_path / "a"))
    reworded = fake_package(tmp_path / "b", core='"""Core, reworded."""\n# a comment\nfrom .util import double\n\n'
                            'def compute(x):\n    """Other words."""\n    from .sub.lazy import triple\n\n'
                            '    return triple(double(x))  # another comment\n',
                            sub__lazy='"""Now with a docstring."""\nfrom .. import util\n\n\ndef triple(x):\n'
                            '    "why"\n    return 3 * util.double(x) // 2\n')
    assert fingerprint(reworded) == original
    assert fingerprint(fake_package(tmp_path / "c", report="def render(x):\n    return repr(x)\n",
                                    unrelated="VALUE = 2\n")) == original
    assert fingerprint(fake_package(tmp_path / "d", util="def double(x):\n    return x + x + 0\n")) != original
    lazy_edit = fake_package(tmp_path / "e", sub__lazy="from .. import util\n\n\ndef triple(x):\n    return 3 * x\n")
    assert fingerprint(lazy_edit) != original


def test_store_reuses_a_step_until_code_in_its_closure_changes(tmp_path):
    calls = []

    def run(root: Path) -> dict:
        store = StepStore(tmp_path / "out", {"model": "m"}, log=lambda m: None, code_root=root)
        return store.run("step", lambda: calls.append(1) or {"n": len(calls)}, code=("fakepkg.core",), k=1)

    assert run(fake_package(tmp_path / "a")) == {"n": 1}
    assert run(fake_package(tmp_path / "b", core=FAKE["core.py"].replace('"""Compute."""', '"""Reworded."""'))) == {"n": 1}
    assert run(fake_package(tmp_path / "c", report="def render(x):\n    return ''\n")) == {"n": 1}
    assert len(calls) == 1
    assert run(fake_package(tmp_path / "d", sub__lazy=FAKE["sub/lazy.py"].replace("3 *", "4 *"))) == {"n": 2}
    assert run(fake_package(tmp_path / "e", sub__lazy=FAKE["sub/lazy.py"].replace("3 *", "4 *"))) == {"n": 2}
    assert len(calls) == 2
