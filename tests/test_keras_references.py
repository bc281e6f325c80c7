"""Keras files made by TensorFlow 2.14 with iNNvestigate 2.1.2's analyses of them
(``../shared/keras``, see its README.md): ``load_keras`` reads each file with h5py alone, and
every analysis innspect offers under the same name equals iNNvestigate's (rtol 1e-2,
atol 1e-5, as iNNvestigate's own tests compare), except where iNNvestigate 2.1.2 is wrong:

- ``bn_cnn``, LRP: iNNvestigate folds BatchNormalization with ``sqrt(var**2 + eps)`` and
  without gamma on the mean term (SPEC.md, README "differences"); innspect folds exactly. The
  test checks the references differ and that innspect's result is the exact fold's.
- ``residual_concat``, Deep Taylor: iNNvestigate 2.1.2's relevance sums to twice the selected
  logit on this model with a residual Add and a Concatenate (found here; its plain-LRP
  references on the same model agree with innspect's), while Deep Taylor's z+ rule conserves
  relevance and innspect's sums to the logit. The test checks both sums instead of matching
  the doubled maps.
- ``/analysis_tf`` (``bn_cnn``'s gradient family, which iNNvestigate 2.1.2 cannot run: its
  issue #292) holds plain TensorFlow gradients, "not iNNvestigate": compared as such.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import innspect
from tests.conftest import REPO_ROOT, require_shared

KERAS_REFERENCES = Path(
    os.environ.get("INNSPECT_SHARED_KERAS", REPO_ROOT.parent / "shared" / "keras")
)
MODELS = ["mlp_relu_seq", "cnn_seq", "conv1d_seq", "bn_cnn", "residual_concat", "softmax_act_cnn"]
RTOL, ATOL = 1e-2, 1e-5


def _folder() -> Path:
    return require_shared(KERAS_REFERENCES, "INNSPECT_SHARED_KERAS")


def _analyze(model: nn.Module, dataset: h5py.Dataset, x: np.ndarray, index: np.ndarray | None):
    options = json.loads(dataset.attrs.get("kwargs", "{}"))
    if isinstance(options.get("input_layer_rule"), list):
        options["input_layer_rule"] = tuple(options["input_layer_rule"])
    if index is None:
        analyzer = innspect.create_analyzer(dataset.attrs["analyzer"], model, **options)
        return np.asarray(analyzer.analyze(x))
    analyzer = innspect.create_analyzer(
        dataset.attrs["analyzer"], model, neuron_selection_mode="index", **options
    )
    return np.asarray(analyzer.analyze(x, neuron_selection=index))


def _exactly_folded(model: nn.Module) -> nn.Module:
    """``model`` with each BatchNorm folded by hand into the layer before it (exact algebra:
    w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta)."""
    folded = copy.deepcopy(model)
    named = list(folded.named_children())
    for (name, layer), (_, bn) in zip(named, named[1:], strict=False):
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        if isinstance(layer, nn.Conv2d):
            new = nn.Conv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                layer.padding, layer.dilation, layer.groups, bias=True,
            )  # fmt: skip
            shape = (-1, 1, 1, 1)
        else:
            new = nn.Linear(layer.in_features, layer.out_features)
            shape = (-1, 1)
        with torch.no_grad():
            new.weight.copy_(layer.weight * scale.reshape(shape))
            new.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # now the identity
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        setattr(folded, name, new.eval())
    return folded.eval()


@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("name", MODELS)
def test_outputs_equal_tensorflow(name: str, suffix: str) -> None:
    folder = _folder()
    with h5py.File(folder / f"{name}.refs.h5") as refs:
        model = innspect.load_keras(folder / f"{name}.{suffix}")
        with torch.no_grad():
            out = model(torch.as_tensor(refs["input"][()])).numpy()
        np.testing.assert_allclose(out, refs["output_model"][()], rtol=1e-5, atol=1e-5)
        assert (model.keras_softmax is not None) == bool(refs.attrs["has_softmax"])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_analyses_equal_innvestigate(name: str) -> None:
    folder = _folder()
    model = innspect.load_keras(folder / f"{name}.h5")
    if model.keras_softmax:
        with pytest.raises(innspect.OutputActivationError, match="model_wo_softmax"):
            innspect.create_analyzer("gradient", model).analyze(np.zeros((1, 8, 8, 3), "f4"))
        model = innspect.model_wo_softmax(model)  # the references are of the logits
    compared, failures, batchnorm_bug = 0, [], []
    with h5py.File(folder / f"{name}.refs.h5") as refs:
        x = refs["input"][()]
        logits = refs["output"][()]
        with torch.no_grad():
            np.testing.assert_allclose(model(torch.as_tensor(x)).numpy(), logits, atol=1e-5)
        groups = [g for g in ("analysis", "analysis_index", "analysis_tf", "analysis_index_tf")]
        for group in (g for g in groups if g in refs):
            index = refs["neuron_selection_index"][()] if "index" in group else None
            selected = refs["max_activation_index"][()] if index is None else index
            for key, dataset in refs[group].items():
                analyzer = dataset.attrs["analyzer"]
                ours = _analyze(model, dataset, x, index)
                reference = dataset[()]
                compared += 1
                equal = np.allclose(ours, reference, rtol=RTOL, atol=ATOL)
                if name == "bn_cnn" and analyzer.startswith("lrp") and not equal:
                    # iNNvestigate's BatchNorm fold is wrong (flat and w^2 rules, which do not
                    # see it, agree above): ours is the exact fold's.
                    exact = _analyze(_exactly_folded(model), dataset, x, index)
                    np.testing.assert_allclose(ours, exact, rtol=RTOL, atol=ATOL)
                    batchnorm_bug.append(key)
                elif name == "residual_concat" and analyzer.startswith("deep_taylor"):
                    logit = logits[np.arange(len(x)), selected]
                    positive = logit > 0  # where it is <= 0 both give zeros (SPEC's bug)
                    theirs = reference.reshape(len(x), -1).sum(axis=1)
                    np.testing.assert_allclose(theirs[positive], 2 * logit[positive], rtol=0.02)
                    assert np.all(theirs[~positive] == 0)
                    if analyzer == "deep_taylor":  # z+ everywhere: conserves up to biases
                        mine = ours.reshape(len(x), -1).sum(axis=1)
                        np.testing.assert_allclose(mine[positive], logit[positive], rtol=0.01)
                elif not equal:
                    failures.append(f"{group}/{key}: max |diff| {np.abs(ours - reference).max()}")
    assert compared > 0
    assert not failures, failures
    if name == "bn_cnn":  # the bug shows where a rule sees the folded weights
        assert {"lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1"} <= set(batchnorm_bug)
