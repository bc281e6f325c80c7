"""Captures shared per model and input size (graph/cache.py): a second analysis of the same
model takes the first one's graph, a model exported by torch.export takes other sequence
lengths (each captured once), and the registry keeps nothing alive."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import transformers as hf
from torch import nn

import innspect
import innspect.graph.graph as graph_module
from innspect.graph.graph import ModelGraph


@pytest.fixture
def captures(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the captures (torch.fx or torch.export runs) made while the test runs."""
    calls: list[int] = []
    real = graph_module.capture

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_module, "capture", counting)
    return calls


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = hf.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return hf.BertForSequenceClassification(config).double().eval()


def _ids(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 40, (2, length), generator=torch.Generator().manual_seed(seed))


def test_a_second_analysis_of_the_model_takes_the_first_ones_capture(captures) -> None:
    model, ids = _bert(), _ids(8, 0)
    innspect.create_analyzer("lrp.attn", model).analyze(ids)
    assert len(captures) == 1  # torch.export: fx cannot trace BERT
    shared = innspect.create_analyzer("lrp.cp", model).analyze(ids)
    assert len(captures) == 1
    alone = innspect.create_analyzer("lrp.cp", copy.deepcopy(model)).analyze(ids)
    assert len(captures) == 2  # another model object: its own capture
    torch.testing.assert_close(shared, alone, rtol=0, atol=0)


def test_an_exported_model_takes_other_sequence_lengths_each_captured_once(captures) -> None:
    # torch.export fixes the sequence length; analysing another length used to fail with
    # "torch.export fixed a shape of the first input it saw".
    model = _bert()
    analyzer = innspect.create_analyzer("lrp.attn", model)
    results = {n: analyzer.analyze(_ids(n, n)) for n in (8, 12)}
    again = analyzer.analyze(_ids(8, 8))
    assert len(captures) == 2  # one per length, the second 8 from the shared registry
    torch.testing.assert_close(again, results[8], rtol=0, atol=0)
    for n, result in results.items():
        fresh = innspect.create_analyzer("lrp.attn", copy.deepcopy(model)).analyze(_ids(n, n))
        torch.testing.assert_close(result, fresh, rtol=0, atol=0)
        assert result.shape[1] == n


def _net() -> nn.Module:
    torch.manual_seed(1)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)
            )
            self.scale = torch.tensor(2.0)  # a plain tensor attribute read by forward
            self.offsets = {"shift": torch.tensor(0.0)}  # a dict of them

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).relu() * self.scale + self.offsets["shift"] * self.body(x)

    model = Scaled().double().eval()
    model.body[1].running_mean.uniform_(-1, 1)
    return model


def _gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    return leaf.grad


def test_other_options_or_a_replaced_tensor_attribute_get_their_own_capture(captures) -> None:
    model = _net()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    innspect.create_analyzer("gradient", model).analyze(x)
    innspect.create_analyzer("lrp.epsilon", model).analyze(x)  # folds its batch norms
    assert len(captures) == 2
    innspect.create_analyzer("gradient", model).analyze(x)
    assert len(captures) == 2
    model.scale = torch.tensor(-3.0, dtype=torch.float64)  # a new tensor: not the captured one
    got = innspect.create_analyzer("gradient", model).analyze(x)
    assert len(captures) == 3
    torch.testing.assert_close(got, _gradient(model, x))
    model.offsets = {"shift": torch.tensor(0.5, dtype=torch.float64)}  # a new dict of tensors
    got = innspect.create_analyzer("gradient", model).analyze(x)
    assert len(captures) == 4
    torch.testing.assert_close(got, _gradient(model, x))


@pytest.mark.parametrize("which", ["cnn", "bert"])
def test_the_registry_keeps_no_model_alive(which: str) -> None:
    model, x = (_net(), torch.randn(2, 2, 4, 4, dtype=torch.float64)) if which == "cnn" else (
        _bert(), _ids(8, 0))  # fmt: skip
    analyzer = innspect.create_analyzer("lrp.epsilon", model)
    analyzer.analyze(x)
    gone = weakref.ref(model)
    del model, analyzer
    gc.collect()
    assert gone() is None


def test_a_graph_outliving_its_model_says_so() -> None:
    model = _net()
    graph = ModelGraph(model, torch.randn(2, 2, 4, 4, dtype=torch.float64))
    assert graph.model is model
    del model
    gc.collect()
    assert graph.live_model() is None
    with pytest.raises(AssertionError, match="freed"):
        graph.model  # noqa: B018 - the property's error is the point
