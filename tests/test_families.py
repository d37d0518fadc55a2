"""The family registry (deepcuts_fast/families/): the one place that knows a model type. Every supported family is
in the tests' family list, refused ones are refused with their reason, and no module outside families/ names a
model type or branches on one."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, PAD_ONE, TINY, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.arch import ROLES, UNIT_AXIS, encoder_layers
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.families import FAMILIES as REGISTRY
from deepcuts_fast.families import REFUSED, family
from deepcuts_fast.models import max_positions

PACKAGE = Path(dc.__file__).parent
MODEL_TYPES = sorted({*REGISTRY, *REFUSED, "bert", "roberta", "distilbert", "electra", "albert", "camembert",
                      "xlm-roberta"})


def test_every_registered_family_is_in_the_tests_family_list():
    assert sorted(REGISTRY) == sorted(FAMILIES)


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_family_describes_its_tiny_model(arch):
    model = tiny_model(arch)
    fam = family(model)
    assert fam is family(model.config) is family({"model_type": arch}) and fam.model_type == arch
    layers = encoder_layers(model)
    assert len(layers) == TINY["layers"] and all(layer.num_heads == TINY["heads"] for layer in layers)
    assert all(layer.ffn_width == TINY["ffn"] for layer in layers)
    # the dependency groups are the six roles, each on its unit axis
    slices = fam.unit_slices()
    assert sorted(p for group in slices.values() for p, _ in group) == sorted(fam.path(r) for r in ROLES)
    for role in ROLES:
        axis = next(a for group in slices.values() for p, a in group if p == fam.path(role))
        assert axis == (0 if UNIT_AXIS[role] == "rows" else 1)
    assert type(model).__name__ == f"{fam.class_stem}ForSequenceClassification"
    # RoBERTa-like families start their positions after the padding index
    offset = model.config.pad_token_id + 1 if arch in PAD_ONE else 0
    assert max_positions(model.config) == 64 - offset
    ids = torch.full((1, max_positions(model.config)), 5)
    with torch.no_grad():
        model(input_ids=ids)  # the longest sequence the model reads
    if offset:
        with pytest.raises((IndexError, RuntimeError)):  # one position too many
            model(input_ids=torch.full((1, 64), 5))


def test_albert_is_refused_with_its_reason():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    model = AlbertForSequenceClassification(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32,
                                                         num_attention_heads=4, intermediate_size=48,
                                                         num_hidden_layers=2, max_position_embeddings=64))
    for call in (lambda: family(model), lambda: encoder_layers(model), lambda: dc.score(model, None, "magnitude")):
        with pytest.raises(DeepCutsError, match="'albert' models cannot be pruned.*share one set of weights.*"
                                                "removes it from all"):
            call()


def test_an_unknown_family_lists_the_supported_ones():
    supported = ", ".join(sorted(REGISTRY))
    with pytest.raises(DeepCutsError, match=f"unsupported architecture 'gpt2'; supported: {supported}"):
        family({"model_type": "gpt2"})
    assert max_positions(type("C", (), {"model_type": "gpt2", "max_position_embeddings": 9})()) == 9


LITERAL = re.compile(r"""["'](%s)["']""" % "|".join(re.escape(t) for t in MODEL_TYPES), re.IGNORECASE)
BRANCH = re.compile(r"model_type\s*(==|!=|\bin\b|\bnot in\b)")


def test_no_module_outside_families_names_a_model_type():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "families") in path.parents:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if LITERAL.search(line) or BRANCH.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "family facts outside deepcuts_fast/families/:\n" + "\n".join(offenders)
