"""Capture never changes the user's model and never explains another function than model(x):
module state written while tracing, hooks, wrappers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import innspect
from innspect.errors import NotAnalyzableModelError


class _CachingAttention(nn.Module):
    """timm LeViT's pattern: in eval mode the bias is cached in a dict keyed by device."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.biases = nn.Parameter(torch.randn(4))
        self.bias_cache: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            bias = self.biases * 1.0
        else:
            key = str(x.device)
            if key not in self.bias_cache:
                self.bias_cache[key] = self.biases * 1.0
            bias = self.bias_cache[key]
        return self.fc(x) + bias


def test_state_written_while_tracing_stays_out_of_the_users_module() -> None:
    # levit_128s failed in torch.fx with "Argument 'getitem_6' ... does not belong to this
    # Graph": its first capture cached an fx Proxy in the user's module, the next read it.
    model = nn.Sequential(_CachingAttention(), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    for name in ("gradient", "lrp.epsilon", "gradient"):
        innspect.create_analyzer(name, model).analyze(x)
    assert model[0].bias_cache == {}
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(innspect.create_analyzer("gradient", model).analyze(x), leaf.grad)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)
    )


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon", "guided_backprop"])
def test_observing_hooks_on_layers_run_on_every_analysis(name: str) -> None:
    model = _net().eval()
    x = torch.randn(2, 2, 4, 4)
    seen: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    innspect.create_analyzer(name, model).analyze(x)
    # The conv's hook saw the real conv output (not an fx Proxy), once per analysis: the
    # conv is not folded with its BatchNorm for the relevance methods.
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], model[0](x).detach())


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon", "guided_backprop", "smoothgrad"])
def test_a_hook_that_changes_values_is_refused_by_every_analyzer(name: str) -> None:
    model = _net().eval()
    model[0].register_forward_hook(lambda module, args, out: out * 10)
    with pytest.raises(NotAnalyzableModelError, match=r"hook on module '0'.*changes"):
        innspect.create_analyzer(name, model).analyze(torch.randn(2, 2, 4, 4))
    pre = _net().eval()
    pre[4].register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    with pytest.raises(NotAnalyzableModelError, match=r"hook on module '4'"):
        innspect.create_analyzer(name, pre).analyze(torch.randn(2, 2, 4, 4))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


@pytest.mark.parametrize("where", ["root", "root-pre", "block", "backward"])
def test_hooks_innspect_cannot_run_as_model_x_does_are_refused_naming_them(where: str) -> None:
    model = nn.Sequential(_Block(), nn.Linear(4, 3))
    recorded: list = []

    def scale(module, args, out):  # the root's hook used to be ignored silently
        return out * 10

    if where == "root":
        model.register_forward_hook(scale)
        match = r"the model itself \(Sequential\) has a forward hook \(.*scale\)"
    elif where == "root-pre":
        model.register_forward_pre_hook(lambda module, args: None)
        match = "the model itself .* forward pre-hook"
    elif where == "block":  # it used to run once, at capture, recording fx proxies
        model[0].register_forward_hook(lambda module, args, out: recorded.append(out))
        match = r"module '0' \(_Block\) has a forward hook"
    else:
        model[1].register_full_backward_hook(lambda module, gin, gout: None)
        match = r"module '1' \(Linear\) has a backward hook"
    analyzer = innspect.create_analyzer("gradient", model)
    with pytest.raises(NotAnalyzableModelError, match=match):
        analyzer.analyze(torch.randn(2, 4))
    assert recorded == []


def test_a_hook_added_after_the_capture_is_refused_too() -> None:
    model = nn.Sequential(_Block(), nn.Linear(4, 3))
    analyzer = innspect.create_analyzer("gradient", model)
    analyzer.analyze(torch.randn(2, 4))
    handle = model.register_forward_hook(lambda module, args, out: out * 10)
    with pytest.raises(NotAnalyzableModelError, match="the model itself"):
        analyzer.analyze(torch.randn(2, 4))
    handle.remove()
    model[1].register_forward_hook(lambda module, args, out: out * 10)
    with pytest.raises(NotAnalyzableModelError, match="hook on module '1'"):
        analyzer.analyze(torch.randn(2, 4))


def test_wrappers_are_analysed_as_the_module_they_wrap() -> None:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(3, 4)
    expected = innspect.create_analyzer("lrp.epsilon", inner).analyze(x)
    for wrapped in (nn.DataParallel(inner), torch.compile(inner)):
        result = innspect.create_analyzer("lrp.epsilon", wrapped).analyze(x)
        torch.testing.assert_close(result, expected)


class _Untraceable(nn.Module):
    """fx cannot trace it (a branch on a traced value): captured by torch.export."""

    def __init__(self, branch: bool = True) -> None:
        super().__init__()
        self.branch = branch
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if not self.branch or h.dim() == 4:
            h = h.flatten(1)
        return self.fc(h)


def _untraceable_and_twin() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    model = _Untraceable().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
    twin = _Untraceable(branch=False).eval()
    twin.load_state_dict(model.state_dict())
    return model, twin


def test_the_export_fallback_takes_any_batch_size() -> None:
    # The export used to be fixed to the first batch size ("Guard failed: ... == 2").
    model, twin = _untraceable_and_twin()
    analyzer = innspect.create_analyzer("gradient", model)
    assert any(n.name == "_guards_fn" for n in analyzer.graph(torch.randn(1, 2, 4, 4)).nodes)
    reference = innspect.create_analyzer("gradient", twin)  # fx-traced
    for batch in (1, 3, 2, 70):  # a first batch of 1 is the hardest (export specialises 1)
        x = torch.randn(batch, 2, 4, 4)
        torch.testing.assert_close(analyzer.analyze(x), reference.analyze(x))
    # Integrated gradients runs its points in chunks of batch_size rows.
    x = torch.randn(2, 2, 4, 4)
    ig = innspect.create_analyzer("integrated_gradients", model, steps=5, batch_size=4)
    twin_ig = innspect.create_analyzer("integrated_gradients", twin, steps=5, batch_size=4)
    torch.testing.assert_close(ig.analyze(x), twin_ig.analyze(x))


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.sequential_preset_a"])
def test_batchnorm_modules_are_honoured_on_the_export_path(name: str) -> None:
    # The relevance methods refused nn.BatchNorm2d there ("needs this layer as a module").
    model, twin = _untraceable_and_twin()
    x = torch.randn(3, 2, 4, 4)
    analyzer = innspect.create_analyzer(name, model)
    result = analyzer.analyze(x)
    torch.testing.assert_close(result, innspect.create_analyzer(name, twin).analyze(x))
    assert analyzer.graph().by_name["conv"].fused == ["bn"]


def test_a_torchscript_submodule_in_training_mode_is_refused_not_run_in_training_mode() -> None:
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)))
    model = nn.Sequential(scripted, nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(3, 4)
    model.train()
    with pytest.raises(NotAnalyzableModelError, match=r"TorchScript submodule '0'.*\.eval\(\)"):
        innspect.create_analyzer("gradient", model).analyze(x)
    model.eval()
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(innspect.create_analyzer("gradient", model).analyze(x), leaf.grad)


class _FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # fx cannot branch on a traced value
            x = x.reshape(int(x.shape[0]), 4)  # int(): export fixes the batch size
        return self.fc(x)


def test_an_export_fixed_to_one_batch_size_says_so_instead_of_blaming_the_input() -> None:
    analyzer = innspect.create_analyzer("gradient", _FixedBatch())
    analyzer.analyze(torch.randn(2, 4))
    with pytest.raises(NotAnalyzableModelError, match="torch.export fixed a shape"):
        analyzer.analyze(torch.randn(3, 4))


def test_hooks_are_refused_on_the_export_fallback() -> None:
    # torch.export would run them once, on fake tensors, at capture.
    model, _ = _untraceable_and_twin()
    seen: list = []
    model.fc.register_forward_hook(lambda module, args, out: seen.append(out))
    with pytest.raises(NotAnalyzableModelError, match="hook on module 'fc' once, at capture"):
        innspect.create_analyzer("gradient", model).analyze(torch.randn(2, 2, 4, 4))
    assert seen == []


class _ListedStages(nn.Module):
    """Calls its registered layers through a plain Python list."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)
        self.stages = [self.a, self.act, self.b]
        self.head = (self.b,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages[:-1]:
            x = stage(x)
        return self.head[0](x)


def test_layers_kept_in_plain_lists_and_tuples_are_viewed_too() -> None:
    model, x = _ListedStages().train(), torch.randn(2, 4)
    result = innspect.create_analyzer("lrp.epsilon", model).analyze(x)
    assert innspect.create_analyzer("lrp.epsilon", model).graph().by_name["a"].kind.name == "LINEAR"
    assert model.stages[0] is model.a and all(m.training for m in model.modules())
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(innspect.create_analyzer("gradient", model).analyze(x), leaf.grad)
    assert result.shape == x.shape


class _DataDependent(nn.Module):
    """Python control flow on a value: neither torch.fx nor torch.export can capture it, and
    torch.export's message (the user stack, guards, the graph) runs to many kilobytes."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(8, 8) for _ in range(60)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        if float(y.sum()) > 0:
            return y
        return -y


def test_a_model_that_cannot_be_captured_fails_in_a_few_lines_and_prints_nothing(capfd) -> None:
    model = _DataDependent().eval()
    with pytest.raises(NotAnalyzableModelError) as caught:
        innspect.create_analyzer("gradient", model).analyze(torch.randn(2, 8))
    message = str(caught.value)
    assert "torch.fx failed with" in message and "torch.export failed with" in message
    assert len(message) < 1500, message  # the peers' messages are cut to their first line
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 1000, err[:2000]  # no graph dump on the terminal
