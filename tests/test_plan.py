"""Plans as data: presets equal their rules written out per layer; composites; the plan."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import innspect
from innspect.analyzers.plan import (
    Composite,
    family,
    first_layer,
    kind,
    layer_index,
    module_type,
    name,
)
from innspect.graph.ops import Kind
from innspect.rules import lrp as rules
from innspect.rules.basic import GRADIENT

SIZES = {"vgg11_bn": 64, "resnet18": 64, "densenet121": 32}


@pytest.fixture(scope="module", params=sorted(SIZES))
def torchvision_case(request):
    model_name = request.param
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None, num_classes=10).double()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    size = SIZES[model_name]
    x = torch.randn(1, 3, size, size, dtype=torch.float64, generator=generator)
    return model_name, model.eval(), x


def _per_layer(model: nn.Module, x: torch.Tensor, choose) -> list:
    """One rule per linear layer in execution order, chosen from the layer's module alone."""
    graph = innspect.create_analyzer("lrp", model).graph(x)
    return [choose(info.module) for info in graph.linear_nodes()]


def _dense_or_conv(dense, conv):
    return lambda module: dense if isinstance(module, nn.Linear) else conv


# (preset, options, its rules written out per layer: (module -> rule), input layer rule)
PRESETS = [
    ("lrp.epsilon_IB", {}, lambda m: rules.Epsilon(bias=False), None),
    (
        "lrp.sequential_preset_a",
        {},
        _dense_or_conv(rules.Epsilon(0.1), rules.AlphaBeta(alpha=1, beta=0)),
        None,
    ),
    (
        "lrp.sequential_preset_b_flat",
        {"epsilon": 0.25},
        _dense_or_conv(rules.Epsilon(0.25), rules.AlphaBeta(alpha=2, beta=1)),
        rules.Flat(),
    ),
]


@pytest.mark.parametrize(
    ("preset", "options", "choose", "first"), PRESETS, ids=[row[0] for row in PRESETS]
)
def test_preset_equals_its_rules_written_per_layer(
    torchvision_case, preset, options, choose, first
) -> None:
    """The presets as data give the numbers of an explicit per-layer rule list, to the bit."""
    _, model, x = torchvision_case
    ours = innspect.create_analyzer(preset, model, **options).analyze(x)
    per_layer = _per_layer(model, x, choose)
    if first is not None:
        per_layer[0] = first  # the first conv is the only layer that sees the input
    explicit = innspect.create_analyzer("lrp", model, rule=per_layer).analyze(x)
    assert torch.equal(ours, explicit)
    assert ours.abs().sum() > 0


def test_until_idx_preset_equals_its_rules_written_per_layer(torchvision_case) -> None:
    _, model, x = torchvision_case
    ours = innspect.create_analyzer(
        "lrp.sequential_preset_b_flat_until_idx", model, until_layer_idx=2
    ).analyze(x)
    per_layer = _per_layer(model, x, _dense_or_conv(rules.Epsilon(0.1), rules.AlphaBeta(2, 1)))
    per_layer[:3] = [rules.Flat()] * 3
    explicit = innspect.create_analyzer("lrp", model, rule=per_layer).analyze(x)
    assert torch.equal(ours, explicit)


def test_a_user_composite_in_a_few_lines() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)
    ).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    mine = Composite(
        [
            (first_layer(), rules.Flat()),
            (family("conv"), rules.ZPlus()),
            (family("dense"), rules.Epsilon(0.25)),
        ]
    )
    ours = innspect.create_analyzer("lrp", model, composite=mine).explain(x)
    explicit = innspect.create_analyzer(
        "lrp", model, rule=[rules.Flat(), rules.ZPlus(), rules.Epsilon(0.25)]
    ).analyze(x)
    assert torch.equal(ours.attribution, explicit)
    assert ours.plan.rules == {
        "0": rules.Flat(),
        "1": ours.plan.rules["1"],  # ReLU: pass-through
        "2": rules.ZPlus(),
        "3": ours.plan.rules["3"],
        "4": GRADIENT,
        "5": rules.Epsilon(0.25),
    }
    text = str(ours.plan)
    assert "Flat" in text and "ZPlus" in text and "Epsilon(epsilon=0.25" in text


def test_predicates_name_index_kind_and_module_type() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    model = model.double()
    x = torch.randn(3, 4, dtype=torch.float64)
    composite = Composite(
        [
            (name("0"), rules.Flat()),
            (layer_index(-1), rules.Epsilon(0.5)),
            (kind(Kind.LINEAR) & module_type(nn.Linear), rules.ZPlus()),
        ]
    )
    plan = innspect.create_analyzer("lrp", model, composite=composite).plan(x).rules
    assert (plan["0"], plan["2"], plan["4"]) == (rules.Flat(), rules.ZPlus(), rules.Epsilon(0.5))
    unmatched = Composite([(name("0"), rules.Flat())])
    with pytest.raises(innspect.UnsupportedNodeError, match="no \\(condition, rule\\)"):
        innspect.create_analyzer("lrp", model, composite=unmatched).analyze(x)


def test_the_plan_names_every_signal_node_and_the_preset_rules() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    plan = innspect.create_analyzer("lrp.sequential_preset_a_flat", model).plan(x)
    assert list(plan.rules) == ["0", "1", "2", "3"]
    assert plan.rules["0"] == rules.Flat() and plan.rules["3"] == rules.Epsilon(0.1)
    lines = str(plan).splitlines()
    assert lines[0].startswith("plan of lrp.sequential_preset_a_flat")
    assert "Conv2d" in lines[1] and "Flat" in lines[1]
    assert "Linear" in lines[4] and "Epsilon(epsilon=0.1" in lines[4]


def test_innspect_methods_plan_prints_the_plan(capsys) -> None:
    from innspect.cli import main

    status = main(["methods", "--plan", "lrp.epsilon_plus_flat", "--model", "torchvision:resnet18"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == "plan of lrp.epsilon_plus_flat (node, operation, kind, rule):"
    rows = {line.split()[0]: line for line in out[1:]}
    assert "Flat" in rows["conv1"] and "AlphaBeta" in rows["layer1.0.conv1"]
    assert "ZRule" in rows["add"] and "Epsilon" in rows["fc"]
    assert main(["methods", "--plan", "lrp.z"]) == 2
    assert "--plan needs --model" in capsys.readouterr().err
