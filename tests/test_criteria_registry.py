"""The criteria registry (deepcuts_fast.scoring.criteria): every registered criterion against its plain-PyTorch
oracle in one shared scoring call, the passes planned from the declarations, a criterion defined here scored by
`dc.score` once registered, and no module outside the package choosing behaviour by a criterion's name."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from naive import batch_loss, naive_fisher, naive_scores, prunable
from test_scoring import assert_scores_close

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.scoring import CRITERIA, Criterion, Needs, get_criterion, register
from deepcuts_fast.scoring.criteria import mean_output
from deepcuts_fast.scoring.engine import shared_passes

NOISE = dict(noise_samples=2, noise_std=0.05, seed=3)
PACKAGE = Path(dc.__file__).parent


def data_free(model, make) -> dict[str, torch.Tensor]:
    """`make(param)` for every prunable weight and bias, in the order the scorer visits them."""
    return {f"{name}.{k}": make(getattr(lin, k).detach()) for name, lin in prunable(model) for k in ("weight", "bias")}


def random_oracle(model, batches) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(NOISE["seed"])
    return data_free(model, lambda p: torch.rand(p.shape, generator=g))


ORACLES = {
    "magnitude": lambda model, batches: data_free(model, torch.abs),
    "random": random_oracle,
    "fisher": lambda model, batches: [(h.diagonal(), n.diagonal()) for h, n in naive_fisher(model, batches)],
    **{name: partial(naive_scores, criterion=name, **NOISE)
       for name in ("gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut", "smooth-cam-cut-shift")},
}
"""Each registered criterion's plain-PyTorch definition: per-weight scores, or (heads, neurons) per layer."""


def test_registry_order_is_the_shown_order():
    assert list(CRITERIA) == ["magnitude", "gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut",
                              "smooth-cam-cut-shift", "fisher", "random"]
    with pytest.raises(DeepCutsError, match="Did you mean 'smooth-cam-cut'"):
        get_criterion("smooth-cam_cutt")


def test_every_registered_criterion_matches_its_oracle_in_one_shared_call(bert, batches):
    assert not set(CRITERIA) - set(ORACLES), "a registered criterion has no plain-PyTorch oracle here"
    weighted = [name for name, c in CRITERIA.items() if c.per_weight]
    got = dc.score_many(bert, batches, weighted, progress=False, **NOISE)
    for name in weighted:
        assert_scores_close(got[name], ORACLES[name](bert, batches))
        assert got[name].fisher is not None  # the call had data: every result carries the loss estimate
    units = [name for name, c in CRITERIA.items() if not c.per_weight]
    got = dc.score_many(bert, batches, units, "unit", progress=False, **NOISE)
    for name in units:
        for i, (heads, neurons) in enumerate(ORACLES[name](bert, batches)):
            torch.testing.assert_close(got[name].heads(i), heads, rtol=1e-4, atol=1e-12)
            torch.testing.assert_close(got[name].neurons(i), neurons, rtol=1e-4, atol=1e-12)


def test_passes_are_planned_from_the_declarations():
    crits = [c for c in CRITERIA.values() if c.needs.data]
    assert [(noisy, [c.name for c in group]) for noisy, group in shared_passes(crits)] == [
        (False, ["gradient", "cam-cut", "cam-cut-shift", "fisher"]),
        (True, ["smooth-cut", "smooth-cam-cut", "smooth-cam-cut-shift"])]
    assert [c.name for c in CRITERIA.values() if not c.needs.data] == ["magnitude", "random"]


@dataclass(frozen=True)
class AbsCamCut(Criterion):
    """|W * G * |a[row]||: Cam-Cut with the magnitude of each row's mean output as its weight."""

    needs: Needs = Needs(weight_gradients=True, output_means=True)

    def row_weight(self, out_sum, tokens, shift):
        return mean_output(out_sum, tokens).abs()


@pytest.fixture
def abs_cam_cut():
    criterion = register(AbsCamCut("abs-cam-cut"))
    yield criterion
    del CRITERIA[criterion.name]


def plain_abs_cam_cut(model, batches) -> dict[str, torch.Tensor]:
    """Sum over batches of |W * dloss/dW * |mean output over the real tokens||, by autograd and forward hooks."""
    linears = dict(prunable(model))
    params = {f"{name}.{k}": getattr(lin, k) for name, lin in linears.items() for k in ("weight", "bias")}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in batches:
        outputs = {}
        hooks = [lin.register_forward_hook(lambda mod, inp, out, name=name: outputs.update({name: out.detach()}))
                 for name, lin in linears.items()]
        grads = torch.autograd.grad(batch_loss(model, batch), list(params.values()))
        for h in hooks:
            h.remove()
        mask = batch["attention_mask"].float()
        for (name, p), g in zip(params.items(), grads):
            a = ((outputs[name.rsplit(".", 1)[0]] * mask[..., None]).sum((0, 1)) / mask.sum()).abs()
            total[name] += (p.detach() * g * (a[:, None] if p.dim() == 2 else a)).abs()
    return total


def test_a_registered_criterion_is_scored_with_no_other_change(bert, batches, abs_cam_cut):
    want = plain_abs_cam_cut(bert, batches)
    assert_scores_close(dc.score(bert, batches, "abs-cam-cut", progress=False), want)
    shared = dc.score_many(bert, batches, ["cam-cut", "abs-cam-cut"], backend="torch", progress=False)
    assert_scores_close(shared["abs-cam-cut"], want)
    assert shared["abs-cam-cut"].meta["criterion"] == "abs-cam-cut" and shared["abs-cam-cut"].fisher is not None


def test_register_refuses_a_taken_name_and_needs_no_pass_can_serve():
    with pytest.raises(DeepCutsError, match="'cam-cut' is registered already"):
        register(AbsCamCut("cam-cut"))
    with pytest.raises(DeepCutsError, match="takes a Criterion"):
        register("cam-cut")
    with pytest.raises(DeepCutsError, match="lowercase"):
        register(AbsCamCut("Abs_Cam_Cut"))
    with pytest.raises(DeepCutsError, match="declare weight_gradients"):
        Needs(noise=True)
    with pytest.raises(DeepCutsError, match="not both"):
        Needs(weight_gradients=True, mask_gradients=True)
    assert list(CRITERIA)[-1] == "random"


NAMES_AS_DATA = {
    "job/goals.py": {"r['criterion'] == 'magnitude'"},  # the report's magnitude baseline row
    "job/pipeline_summary.py": {"base == 'fisher'"},  # the report's Fisher baseline row
}
"""Comparisons that pick a result row by its criterion's name (names as data), not how to score."""


def name_tests(path: Path) -> list[str]:
    """The comparisons in `path` that test a criterion's name: `x == "smooth-cut"`, `x in ("fisher", ...)`,
    `x == FISHER` (a module constant holding a name), `x.startswith("smooth")`, `"cam" in x`."""
    names = set(CRITERIA)
    tree = ast.parse(path.read_text())
    constants = {t.id for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and node.value.value in names
                 for t in node.targets if isinstance(t, ast.Name)}

    def names_one(node: ast.AST) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_one(e) for e in node.elts)
        return (isinstance(node, ast.Constant) and node.value in names) or (
            isinstance(node, ast.Name) and node.id in constants)

    def part_of_one(node: ast.AST, where) -> bool:
        return (isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 3
                and any(where(name, node.value) for name in names))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Name) and o.id == "allocation" for o in operands):
                continue  # plan's allocation option, whose "fisher" names an allocation
            substring = isinstance(node.ops[0], ast.In) and part_of_one(node.left, str.__contains__)
            if substring or any(names_one(o) for o in operands):
                found.append(ast.unparse(node))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
              and node.func.attr in ("startswith", "endswith")):
            if part_of_one(node.args[0], getattr(str, node.func.attr)):
                found.append(ast.unparse(node))
    return found


def test_no_module_outside_the_criteria_package_tests_a_criterion_name():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("scoring/criteria/"):
            continue
        found = [f for f in name_tests(path) if f not in NAMES_AS_DATA.get(relative, set())]
        if found:
            offenders[relative] = found
    assert not offenders, f"decide from the criterion's declarations (criterion.needs), not its name: {offenders}"
