"""Bad input to the library gets a clear innspect error naming what was wrong and what to do;
results are never NaN silently; a softmax is found wherever the output passes through it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.errors import (
    ConfigFileError,
    InputError,
    NeuronSelectionError,
    OptionError,
    OutputActivationError,
)

GRADIENT_FAMILY = ["gradient", "input_t_gradient", "integrated_gradients", "smoothgrad"]


class _ScaledSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100 * F.softmax(self.fc(x), dim=1)


class _SlicedSoftmax(_ScaledSoftmax):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=-1)[:, :2].reshape(x.shape[0], -1) / 2 + 1


@pytest.mark.parametrize("name", [*GRADIENT_FAMILY, "lrp.z", "deconvnet"])
@pytest.mark.parametrize("make", ["flatten", "scaled", "sliced", "log_softmax_dropout"])
def test_a_softmax_behind_shape_and_scaling_nodes_is_refused_by_every_analyzer(
    name: str, make: str
) -> None:
    model = {
        "flatten": lambda: nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1), nn.Flatten()),
        "scaled": _ScaledSoftmax,
        "sliced": _SlicedSoftmax,
        "log_softmax_dropout": lambda: nn.Sequential(
            nn.Linear(4, 3), nn.LogSoftmax(dim=1), nn.Dropout(0.1)
        ),
    }[make]()
    with pytest.raises(OutputActivationError, match="model_wo_softmax"):
        innspect.create_analyzer(name, model).analyze(torch.randn(2, 4))


def test_a_softmax_inside_the_model_is_not_an_output_activation() -> None:
    # Attention-like: softmax weights multiply another signal, then a linear layer.
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.softmax(self.fc(x), dim=1) * x)

    innspect.create_analyzer("gradient", Inner()).analyze(torch.randn(2, 4))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


class _NaNAtZero(nn.Module):
    """Normalises its input: NaN at the zero baseline (0 / 0), finite elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x / x.abs().sum(dim=1, keepdim=True))


def test_non_finite_results_raise_unless_allowed() -> None:
    # Integrated gradients returned all-NaN silently for a model NaN at the reference.
    model, x = _NaNAtZero(), torch.rand(2, 4) + 0.5
    with pytest.raises(innspect.NonFiniteRelevanceError, match="reference_inputs.*allow_nonfinite"):
        innspect.create_analyzer("integrated_gradients", model, steps=4).analyze(x)
    allowed = innspect.create_analyzer("integrated_gradients", model, steps=4, allow_nonfinite=True)
    assert torch.isnan(allowed.analyze(x)).all()
    shifted = innspect.create_analyzer("integrated_gradients", model, steps=4, reference_inputs=1.0)
    assert torch.isfinite(shifted.analyze(x)).all()
    # The same for every analyzer, with explain() too: a weight that is NaN.
    broken = _mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    for name in ("gradient", "lrp.epsilon", "smoothgrad"):
        with pytest.raises(innspect.NonFiniteRelevanceError, match="at these inputs"):
            innspect.create_analyzer(name, broken).explain(torch.ones(1, 4))


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon", "integrated_gradients"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_integer_inputs_get_a_message_saying_what_to_do(name: str, dtype: torch.dtype) -> None:
    x = torch.ones(2, 4, dtype=dtype)
    with pytest.raises(InputError, match=r"is torch\.u?int.*X\.float\(\).*attribute_to"):
        innspect.create_analyzer(name, _mlp()).analyze(x)
    with pytest.raises(InputError, match=r"convert it to floating point"):
        innspect.create_analyzer(name, _mlp()).analyze(x.numpy())


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("3", "must be integers, got '3'"),
        ([1, None], "must be integers, got None"),
        (2**63, "index 9223372036854775808 is out of range"),
        (np.uint64(2**64 - 1), "index 18446744073709551615 is out of range"),
        (torch.tensor([1.0, 2.0]), "must be integers, got torch.float32"),
        (True, "must be integers"),
        ([[1, 2], [3]], "not a sequence of ints"),
    ],
)
def test_bad_neuron_selections_are_named(selection, message: str) -> None:
    analyzer = innspect.create_analyzer("gradient", _mlp(), neuron_selection_mode="index")
    with pytest.raises(NeuronSelectionError, match=re.escape(message)):
        analyzer.analyze(torch.randn(2, 4), neuron_selection=selection)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("gradient", {"reverse_clip_values": 5}, "reverse_clip_values must be a pair"),
        ("gradient", {"reverse_clip_values": (2, 1)}, "low <= high"),
        ("gradient", {"reverse_project_bottleneck_layers": "yes"}, "must be a pair"),
        ("gradient", {"reverse_keep_tensors": "no"}, "must be True or False"),
        ("integrated_gradients", {"steps": 2.5}, "steps must be an integer, got 2.5"),
        ("integrated_gradients", {"steps": 10**12}, "steps must be >= 1 and <= 1,000,000"),
        ("smoothgrad", {"noise_scale": float("nan")}, "noise_scale must be >= 0 and finite"),
        ("smoothgrad", {"augment_by_n": "8"}, "augment_by_n must be an integer"),
        ("smoothgrad", {"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_options_are_named_on_creation(name: str, options: dict, message: str) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        innspect.create_analyzer(name, _mlp(), **options)


def test_meta_tensors_are_refused_clearly() -> None:
    model = _mlp().to("meta")
    with pytest.raises(InputError, match="meta device"):
        innspect.create_analyzer("gradient", model).analyze(torch.randn(2, 4, device="meta"))
    with pytest.raises(InputError, match="model's parameters are on the meta device"):
        innspect.create_analyzer("lrp.epsilon", model).analyze(np.ones((2, 4), np.float32))


def _saved(tmp_path, name: str = "integrated_gradients", **options) -> str:
    path = str(tmp_path / "cfg")
    innspect.create_analyzer(name, _mlp(), **options).save_npz(path)
    return path


def test_save_npz_and_load_npz_agree_on_the_file_name(tmp_path) -> None:
    path = _saved(tmp_path, steps=7)
    assert (tmp_path / "cfg.npz").exists() and not (tmp_path / "cfg").exists()
    loaded = innspect.Analyzer.load_npz(path, _mlp())  # the name given to save_npz
    assert loaded.steps == 7
    assert type(innspect.Analyzer.load_npz(path + ".npz", _mlp())) is type(loaded)
    with pytest.raises(FileNotFoundError, match="nor"):
        innspect.Analyzer.load_npz(tmp_path / "other", _mlp())


def _rewrite(path: str, **entries) -> str:
    np.savez(path + ".npz", **entries)
    return path


@pytest.mark.parametrize(
    "tamper",
    ["truncated", "garbage", "not-json", "json-list", "no-config", "no-name", "pickle", "npy"],
)
def test_damaged_or_foreign_files_raise_one_error_naming_the_file(tmp_path, tamper: str) -> None:
    path = _saved(tmp_path)
    file = tmp_path / "cfg.npz"
    if tamper == "truncated":
        file.write_bytes(file.read_bytes()[:40])
    elif tamper == "garbage":
        file.write_bytes(b"\x00" * 100)
    elif tamper == "not-json":
        _rewrite(path, config=np.array("{not json"))
    elif tamper == "json-list":
        _rewrite(path, config=np.array("[1, 2]"))
    elif tamper == "no-config":
        _rewrite(path, other=np.zeros(2))
    elif tamper == "no-name":
        _rewrite(path, config=np.array('{"options": {}}'))
    elif tamper == "pickle":  # an object array would need unpickling: never done
        _rewrite(path, config=np.array([{"name": "gradient"}], dtype=object))
    else:
        file.unlink()
        np.save(file, np.zeros(3))
        (tmp_path / "cfg.npz.npy").rename(file)
    with pytest.raises(ConfigFileError, match=re.escape(str(file))):
        innspect.Analyzer.load_npz(path, _mlp())


def test_loaded_options_are_validated_as_on_creation(tmp_path) -> None:
    path = str(tmp_path / "cfg")
    _rewrite(path, config=np.array('{"name": "integrated_gradients", "options": {"steps": 1e12}}'))
    with pytest.raises(ConfigFileError, match=r"steps must be >= 1 and <= 1,000,000"):
        innspect.Analyzer.load_npz(path, _mlp())
    _rewrite(path, config=np.array('{"name": "gradient", "options": {"no_such_option": 1}}'))
    with pytest.raises(ConfigFileError, match="not valid for 'gradient'.*no_such_option"):
        innspect.Analyzer.load_npz(path, _mlp())
    _rewrite(path, config=np.array('{"name": "lrp.no_such_rule", "options": {}}'))
    with pytest.raises(ConfigFileError, match="no analyzer named 'lrp.no_such_rule'"):
        innspect.Analyzer.load_npz(path, _mlp())


def test_a_file_holding_another_analyzer_is_refused_by_a_specific_class(tmp_path) -> None:
    from innspect.analyzers.registry import analyzer_class

    path = _saved(tmp_path, "gradient")
    with pytest.raises(ConfigFileError, match="holds a 'gradient' analyzer, not 'smoothgrad'"):
        analyzer_class("smoothgrad").load_npz(path, _mlp())
    assert type(analyzer_class("gradient").load_npz(path, _mlp())).name == "gradient"


class _Payload:
    """Unpickling it would create a file: the proof that a pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payloads_in_untrusted_files_never_run(tmp_path) -> None:
    import pickle

    from innspect.errors import LoadingError
    from innspect.loading.inputs import load_input
    from innspect.loading.models import load_weights

    marker = tmp_path / "payload-ran"
    payload = _Payload(str(marker))
    npz = tmp_path / "cfg.npz"
    np.savez(npz, config=np.array([payload], dtype=object))
    with pytest.raises(ConfigFileError):
        innspect.Analyzer.load_npz(npz, _mlp())
    npy = tmp_path / "x.npy"
    np.save(npy, np.array([payload], dtype=object), allow_pickle=True)
    with pytest.raises(LoadingError):
        load_input(npy, "none")
    weights = tmp_path / "w.pt"
    weights.write_bytes(pickle.dumps({"0.weight": payload}))
    with pytest.raises(LoadingError):
        load_weights(_mlp(), str(weights))
    torch.save({"model": payload}, tmp_path / "w2.pt")
    with pytest.raises(LoadingError):
        load_weights(_mlp(), str(tmp_path / "w2.pt"))
    assert not marker.exists()
    pickle.loads(pickle.dumps(payload)).close()  # the control: unpickling does run it
    assert marker.exists()
