"""Every iNNvestigate parameter is accepted or refused as docs/innvestigate.md's table says."""

from __future__ import annotations

import ast
import re
import warnings

import pytest
import torch
from torch import nn

import innspect
from innspect.analyzers.reverse import ReverseAnalyzer
from tests.conftest import REPO_ROOT

TABLE = REPO_ROOT / "docs" / "innvestigate.md"
# Constructor parameters of the iNNvestigate 2.1.2 analyzers, and the 1.0.9 ones its README
# documents: each must have a row.
INNVESTIGATE_PARAMETERS = {
    "neuron_selection_mode",
    "disable_model_checks",
    "allow_lambda_layers",
    "reverse_verbose",
    "reverse_clip_values",
    "reverse_project_bottleneck_layers",
    "reverse_check_min_max_values",
    "reverse_check_finite",
    "reverse_keep_tensors",
    "reverse_reapply_on_copied_layers",
    "postprocess",
    "steps",
    "reference_inputs",
    "augment_by_n",
    "noise_scale",
    "subanalyzer",
    "stddev",
    "rule",
    "input_layer_rule",
    "until_layer_idx",
    "until_layer_rule",
    "bn_layer_rule",
    "bn_layer_fuse_mode",
    "epsilon",
    "bias",
    "alpha",
    "beta",
    "low",
    "high",
}
# What an analyzer needs besides the option under test.
REQUIRED = {
    "deep_taylor.bounded": {"low": -3.0, "high": 3.0},
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "lrp.alpha_beta": {"alpha": 2},
    "integrated_gradients": {"steps": 4},  # kept small: the table checks acceptance
    "smoothgrad": {"augment_by_n": 4},
}


def _rows() -> list[tuple[list[str], list[str], dict, str]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        call = ast.literal_eval(cells[2].strip("`"))
        rows.append((names, _analyzers(cells[1]), call, cells[3]))
    return rows


def _analyzers(cell: str) -> list[str]:
    if cell == "every analyzer":
        return innspect.list_analyzers()
    if cell.startswith("every analyzer but "):
        excluded = set(re.findall(r"`([^`]+)`", cell))
        return [name for name in innspect.list_analyzers() if name not in excluded]
    if cell == "every reverse analyzer":
        return [
            name
            for name in innspect.list_analyzers()
            if issubclass(innspect.analyzer_class(name), ReverseAnalyzer)
        ]
    return re.findall(r"`([^`]+)`", cell)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).double()


ROWS = _rows()


def test_the_table_has_every_innvestigate_parameter() -> None:
    documented = {name for names, _, _, _ in ROWS for name in names}
    assert documented >= INNVESTIGATE_PARAMETERS, INNVESTIGATE_PARAMETERS - documented
    assert {status for *_, status in ROWS} == {"accepted", "refused"}


@pytest.mark.parametrize(
    ("names", "analyzers", "call", "status"), ROWS, ids=[f"{r[0][0]}-{r[3]}" for r in ROWS]
)
def test_parameter_is_accepted_or_refused_as_documented(names, analyzers, call, status, capsys):
    model = _model().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert analyzers, "a row names no analyzer"
    for name in analyzers:
        required = REQUIRED.get(name, {})
        if {"alpha", "beta", "low", "high"} & set(call):
            required = {}  # the row is about these
        options = {**required, **call}
        if status == "accepted":
            analyzer = innspect.create_analyzer(name, model, **options)
            if analyzer.is_trainable:  # pattern.net / pattern.attribution learn from data first
                analyzer.fit(x)
            result = analyzer.analyze(x)
            if analyzer.family == "cam" and name != "guided_grad_cam":  # one map per sample
                assert result.shape == (x.shape[0], 1, *x.shape[2:]), name
            else:
                assert result.shape == x.shape, name
        else:
            with pytest.raises((TypeError, ValueError)) as info:
                innspect.create_analyzer(name, model, **options)
            message = str(info.value)
            assert any(key in message for key in call), f"{name}: {message}"
    capsys.readouterr()  # reverse_verbose prints


def test_bias_false_means_the_ignore_bias_variants() -> None:
    # iNNvestigate 2.x: create_analyzer("lrp.epsilon", m, epsilon=0.1, bias=False).
    model = _model().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    pairs = [
        ("lrp.epsilon", {"epsilon": 0.1, "bias": False}, "lrp.epsilon_IB", {"epsilon": 0.1}),
        ("lrp.z", {"bias": False}, "lrp.z_IB", {}),
        ("lrp.alpha_beta", {"alpha": 2, "bias": False}, "lrp.alpha_2_beta_1_IB", {}),
    ]
    for name, options, same, same_options in pairs:
        ours = innspect.create_analyzer(name, model, **options).analyze(x)
        expected = innspect.create_analyzer(same, model, **same_options).analyze(x)
        torch.testing.assert_close(ours, expected, rtol=0, atol=0, msg=name)
    with_bias = innspect.create_analyzer("lrp.epsilon", model, epsilon=0.1).analyze(x)
    assert not torch.equal(with_bias, ours)


def test_disable_model_checks_explains_a_softmax_output() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(innspect.OutputActivationError):
        innspect.create_analyzer("gradient", model).analyze(x)
    ours = innspect.create_analyzer("gradient", model, disable_model_checks=True).analyze(x)
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    (expected,) = torch.autograd.grad(out.max(dim=1).values.sum(), leaf)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


def test_integrated_gradients_postprocess_applies_to_each_gradient() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    steps = 5
    ours = innspect.create_analyzer(
        "integrated_gradients", model, steps=steps, postprocess="square"
    ).analyze(x)
    target = model(x).argmax(dim=1)
    total = torch.zeros_like(x)
    for k in range(steps):
        point = (x * k / steps).requires_grad_(True)
        out = model(point).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(out, point)
        total += grad.square()
    torch.testing.assert_close(ours, total / steps * x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["lrp.z", "deep_lift"])  # deep_lift walks on its own
def test_reverse_check_min_max_values_prints_and_records(method, capsys) -> None:
    model = _model().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer(method, model, reverse_check_min_max_values=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = analyzer.explain(x)
    # min/max are read from the detached signal: no "requires_grad=True to a scalar" warning
    # (torch gives it once per process, so this catches it when no earlier test did)
    assert not [w for w in caught if "requires_grad" in str(w.message)]
    printed = capsys.readouterr().out
    assert set(explanation.min_max) >= {"4", "input"}
    assert "node '4'" in printed and "min" in printed
