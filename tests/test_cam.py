"""Class activation maps: properties from the papers, the layer and grid choice, options,
errors and memory (grad-cam itself: tests/test_cam_peers.py)."""

from __future__ import annotations

import resource

import numpy as np
import pytest
import torch
from torch import nn

import innspect
from innspect.analyzers import cam_methods
from innspect.analyzers.cam import kernel_projection, minmax, principal_projection
from innspect.cli.main import main as cli_main
from innspect.errors import InputError, NeuronSelectionError, OptionError


class GapNet(nn.Module):
    """conv -> ReLU -> conv (the mapped layer) -> ReLU -> global average pool -> linear: the
    architecture CAM (Zhou et al. 2016) is defined on."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def gapnet() -> GapNet:
    torch.manual_seed(0)
    return GapNet().double().eval()


def x_of(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_grad_cam_equals_cam_from_the_weights(gapnet) -> None:
    """Zhou et al. 2016: CAM_k = sum_c W[k, c] A_c. Grad-CAM's weights are the mean gradient,
    W[k, c] / (h w), so its raw map times h w is CAM."""
    x = x_of(3, 3, 12, 12)
    analyzer = innspect.create_analyzer(
        "cam.grad",
        gapnet,
        layer="features.3",
        upsample=False,
        normalize=False,
        neuron_selection_mode="index",
    )
    ours = analyzer.analyze(x, neuron_selection=[0, 2, 3])
    a = gapnet.features(x).detach()
    h, w = a.shape[2:]
    cam = torch.einsum("nc,nchw->nhw", gapnet.fc.weight[[0, 2, 3]].detach(), a)
    assert ours.shape == (3, 1, h, w)
    torch.testing.assert_close(ours[:, 0] * h * w, cam, rtol=1e-12, atol=1e-12)
    # the default layer is the same map: the last spatial map before the pooling
    assert [layer.name for layer in analyzer.layers(x)] == ["features.3"]


def test_hires_cam_is_gradient_times_activation(gapnet) -> None:
    """HiResCAM = sum_c G * A, computed here by autograd on the model split at the layer;
    through a pool and a linear layer its sum is the class score minus the bias."""
    x = x_of(2, 3, 12, 12, seed=1)
    ours = innspect.create_analyzer("cam.hires", gapnet, upsample=False, normalize=False).explain(x)
    a = gapnet.features(x).detach().requires_grad_(True)
    y = gapnet.fc(gapnet.pool(a).flatten(1))
    k = y.argmax(dim=1)
    (g,) = torch.autograd.grad(y.gather(1, k[:, None]).sum(), a)
    expected = (g * a).sum(dim=1).detach()
    torch.testing.assert_close(ours.attribution[:, 0], expected, rtol=1e-12, atol=1e-12)
    scores = y.detach().gather(1, k[:, None])[:, 0] - gapnet.fc.bias.detach()[k]
    torch.testing.assert_close(ours.attribution.sum(dim=(1, 2, 3)), scores)
    assert torch.equal(ours.selected, k)


def test_raw_maps_are_linear_in_the_target(gapnet) -> None:
    """Unnormalised Grad-CAM is linear in the start signal: a contrast's map is the
    difference of the two classes' maps."""
    x = x_of(2, 3, 12, 12, seed=2)
    options = {"upsample": False, "normalize": False}
    contrast = innspect.create_analyzer("cam.grad", gapnet, **options).analyze(
        x, target=lambda y: y[:, 1] - y[:, 3]
    )
    by_index = innspect.create_analyzer(
        "cam.grad", gapnet, neuron_selection_mode="index", **options
    )
    difference = by_index.analyze(x, neuron_selection=1) - by_index.analyze(x, neuron_selection=3)
    torch.testing.assert_close(contrast, difference)


def test_normalised_output_and_upsampling(gapnet) -> None:
    x = x_of(2, 3, 12, 12, seed=3)
    raw = innspect.create_analyzer("cam.grad", gapnet, normalize=False, upsample=False).analyze(x)
    out = innspect.create_analyzer("cam.grad", gapnet).analyze(x)
    assert out.shape == (2, 1, 12, 12)
    # grad-cam's order: clamp at 0, scale per image, resize (half-pixel bilinear), scale
    small = minmax(raw.clamp_min(0))
    big = torch.nn.functional.interpolate(small, size=(12, 12), mode="bilinear")
    torch.testing.assert_close(out, minmax(big))
    assert float(out.amin()) == 0.0 and 0.99 < float(out.amax()) <= 1.0
    # numpy in, numpy out
    assert isinstance(innspect.create_analyzer("cam.grad", gapnet).analyze(x.numpy()), np.ndarray)


def test_projections_are_principal_components() -> None:
    maps = x_of(2, 4, 3, 5, seed=4)
    flat = maps.flatten(2).transpose(1, 2)
    centred = flat - flat.mean(dim=1, keepdim=True)
    for i in range(2):
        projection = principal_projection(maps)[i].flatten()
        # the projection is the centred data's direction of largest variance, scaled by it
        top = torch.linalg.svdvals(centred[i])[0]
        torch.testing.assert_close(projection.norm(), top)
        # a linear kernel's first kernel component is the same projection up to sign
        linear = kernel_projection(maps, "linear", None)[i].flatten()
        torch.testing.assert_close(linear.abs(), projection.abs())


def test_score_and_ablation_weights_by_hand(gapnet) -> None:
    """Score-CAM's weights are the softmax of the masked inputs' scores; Ablation-CAM's the
    relative score drops with each channel set to 0 (post-ReLU map): checked by masking and
    ablating by hand."""
    x = x_of(1, 3, 12, 12, seed=5)
    a = gapnet.features(x).detach()
    y = gapnet(x).detach()
    k = int(y.argmax())
    masks = torch.nn.functional.interpolate(a, size=(12, 12), mode="bilinear", align_corners=True)
    low = masks.flatten(2).min(dim=2).values[..., None, None]
    high = masks.flatten(2).max(dim=2).values[..., None, None]
    masks = (masks - low) / (high - low + 1e-8)
    scores = torch.stack([gapnet(x * masks[:, c : c + 1])[0, k] for c in range(5)]).detach()
    expected = torch.einsum("c,chw->hw", scores.softmax(0), a[0])
    ours = innspect.create_analyzer(
        "cam.score", gapnet, upsample=False, normalize=False, batch_size=2
    ).analyze(x)
    torch.testing.assert_close(ours[0, 0], expected)
    drops = []
    for c in range(5):
        ablated = a.clone()
        ablated[:, c] = 0
        drops.append((y[0, k] - gapnet.fc(gapnet.pool(ablated).flatten(1))[0, k]) / y[0, k])
    expected = torch.einsum("c,chw->hw", torch.stack(drops).detach(), a[0])
    ours = innspect.create_analyzer(
        "cam.ablation", gapnet, upsample=False, normalize=False, batch_size=3
    ).analyze(x)
    torch.testing.assert_close(ours[0, 0], expected)


class _Counting(GapNet):
    """GapNet counting the Python calls of its forward (the capture traces it; the captured
    graph's passes never call it)."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _Counting.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("pair", [False, True])
def test_score_cam_masked_passes_run_the_model_itself_when_the_image_is_its_only_input(
    pair: bool,
) -> None:
    """Score-CAM's masked passes call the model (its eager kernels, as grad-cam), one call
    per pass, when the image is its only input; a model taking (image, scale) is run through
    its graph instead. Both give the by-hand weights (test above)."""

    class Pair(_Counting):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * scale

    torch.manual_seed(0)
    model = (Pair() if pair else _Counting()).double().eval()
    x = x_of(2, 3, 12, 12, seed=5)
    inputs = (x, torch.ones(2, 1, dtype=torch.float64)) if pair else x
    analyzer = innspect.create_analyzer("cam.score", model, batch_size=2, attribute_to="x")
    expected = analyzer.analyze(inputs)  # captures the graph (calls forward to trace it)
    _Counting.calls = 0
    again = analyzer.analyze(inputs)
    passes = 2 * 3  # per image, ceil(5 channels / 2 per pass)
    assert _Counting.calls == (0 if pair else passes)
    torch.testing.assert_close(again, expected)
    if not pair:  # the graph's own passes give the same map
        graph_only = innspect.create_analyzer("cam.score", model, batch_size=2)
        graph_only._model_on_images = lambda cam_pass: None
        torch.testing.assert_close(graph_only.analyze(x), expected)


def test_ablation_ratio_keeps_the_chosen_channels_weights(gapnet) -> None:
    """With ``ratio_channels_to_ablate``, the ablated channels keep the weights of a full
    Ablation-CAM and the others get 0; once the highest and lowest ``int(C * ratio)`` cover
    the C channels, every one is ablated (grad-cam would list the middle ones twice)."""
    x = x_of(2, 3, 12, 12, seed=10)
    a = gapnet.features(x).detach()
    raw = {"upsample": False, "normalize": False}
    full = innspect.create_analyzer("cam.ablation", gapnet, **raw).analyze(x)
    chosen = cam_methods.channels_to_ablate(a, 0.2)  # int(5 * 0.2) = 1: two channels
    assert [len(c) for c in chosen] == [2, 2]
    ours = innspect.create_analyzer(
        "cam.ablation", gapnet, ratio_channels_to_ablate=0.2, batch_size=1, **raw
    ).analyze(x)
    for i in range(2):
        # the full map's weights, read back from it channel by channel (least squares)
        basis = a[i].flatten(1).T  # (positions, channels)
        weights = torch.linalg.lstsq(basis, full[i, 0].flatten()).solution
        keep = torch.zeros(5, dtype=torch.bool)
        keep[chosen[i]] = True
        expected = (basis * torch.where(keep, weights, 0.0)).sum(dim=1)
        torch.testing.assert_close(ours[i, 0].flatten(), expected)
    torch.testing.assert_close(
        innspect.create_analyzer(
            "cam.ablation", gapnet, ratio_channels_to_ablate=0.6, **raw
        ).analyze(x),
        full,
    )  # int(5 * 0.6) = 3: 3 highest and 3 lowest cover all 5


def test_layer_by_module_path_and_list(gapnet) -> None:
    x = x_of(1, 3, 12, 12, seed=6)
    by_path = innspect.create_analyzer("cam.grad", gapnet, layer="features").analyze(x)
    by_node = innspect.create_analyzer("cam.grad", gapnet, layer="features.3").analyze(x)
    torch.testing.assert_close(by_path, by_node)
    analyzer = innspect.create_analyzer("cam.grad", gapnet, layer=["features.1", "features.3"])
    assert [layer.grid for layer in analyzer.layers(x)] == [(12, 12), (5, 5)]
    with pytest.raises(InputError, match="different grids"):
        innspect.create_analyzer(
            "cam.grad", gapnet, layer=["features.1", "features.3"], upsample=False
        ).analyze(x)


def test_clear_errors(gapnet) -> None:
    x = x_of(1, 3, 12, 12)
    with pytest.raises(InputError, match="neither a node"):
        innspect.create_analyzer("cam.grad", gapnet, layer="nope").analyze(x)
    with pytest.raises(InputError, match="neither a spatial map"):
        innspect.create_analyzer("cam.grad", gapnet, layer="fc").analyze(x)
    with pytest.raises(OptionError, match="layer"):
        innspect.create_analyzer("cam.grad", gapnet, layer=[])
    with pytest.raises(OptionError, match="takes no layer"):
        innspect.create_analyzer("cam.full_grad", gapnet, layer="features")
    with pytest.raises(OptionError, match="upsample"):
        innspect.create_analyzer("guided_grad_cam", gapnet, upsample=False)
    with pytest.raises(OptionError, match="kernel"):
        innspect.create_analyzer("cam.kpca", gapnet, kernel="laplace")
    for ratio in (0.0, 1.5):
        with pytest.raises(OptionError, match="ratio_channels_to_ablate"):
            innspect.create_analyzer("cam.ablation", gapnet, ratio_channels_to_ablate=ratio)
    with pytest.raises(InputError, match="selects no channel"):  # int(5 * 0.1) = 0
        innspect.create_analyzer("cam.ablation", gapnet, ratio_channels_to_ablate=0.1).analyze(x)
    with pytest.raises(OptionError, match="aug_smooth=True"):
        innspect.create_analyzer("cam.grad", gapnet, tta_transforms=[(abs, abs)])
    for bad in ([], [abs], [(abs, 3)], abs):
        with pytest.raises(OptionError, match="tta_transforms"):
            innspect.create_analyzer("cam.grad", gapnet, aug_smooth=True, tta_transforms=bad)
    for pair, what in (
        ((lambda im: im[..., 1:], lambda m: m), "input's shape"),
        ((lambda im: im, lambda m: m[..., 1:]), "map's shape"),
    ):
        analyzer = innspect.create_analyzer(
            "cam.grad", gapnet, aug_smooth=True, tta_transforms=[pair]
        )
        with pytest.raises(InputError, match=what):
            analyzer.analyze(x)
    with pytest.raises(OptionError, match="batch_size"):
        innspect.create_analyzer("cam.score", gapnet, batch_size=0)
    with pytest.raises(NeuronSelectionError):
        innspect.create_analyzer("cam.finer", gapnet, neuron_selection_mode="all")
    with pytest.raises(OptionError, match="base_method must be one of cam.grad"):
        innspect.create_analyzer("cam.finer", gapnet, base_method="cam.eigen")
    dense = nn.Sequential(nn.Linear(6, 3)).double()
    with pytest.raises(InputError, match="image input"):
        innspect.create_analyzer("cam.grad", dense).analyze(x_of(2, 6))


def test_model_is_not_modified(gapnet) -> None:
    gapnet.train()
    before = {k: v.clone() for k, v in gapnet.state_dict().items()}
    for name in ("cam.grad", "cam.ablation", "cam.full_grad", "guided_grad_cam", "cam.shapley"):
        innspect.create_analyzer(name, gapnet).analyze(x_of(2, 3, 12, 12))
    assert gapnet.training and all(m.training for m in gapnet.modules())
    after = gapnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in gapnet.parameters())


def test_plan_names_node_and_grid(gapnet, capsys) -> None:
    plan = innspect.create_analyzer("cam.grad", gapnet).plan(x_of(1, 3, 12, 12))
    assert "'features.3': 5x5 spatial map" in str(plan)
    with pytest.raises(InputError, match="example input"):
        innspect.create_analyzer("cam.grad", gapnet).plan()
    full = str(innspect.create_analyzer("cam.full_grad", gapnet).plan(x_of(1, 3, 12, 12)))
    assert "2 bias layers (features.0, features.2)" in full
    status = cli_main(
        [
            "methods",
            "--plan",
            "cam.grad",
            "--model",
            "torchvision:resnet18",
            "--input-shape",
            "3,64,64",
        ]
    )
    assert status == 0
    assert "'layer4.1.relu:1': 2x2 spatial map (channels first)" in capsys.readouterr().out


@pytest.mark.slow
def test_memory_stays_flat_over_many_calls() -> None:
    """grad-cam's users report memory growing across calls (its issues #132, #195, #483):
    1,000 calls keep the peak resident size where 100 calls left it."""
    torch.manual_seed(0)
    model = GapNet().eval()
    x = torch.randn(4, 3, 12, 12)
    analyzers = [innspect.create_analyzer(n, model) for n in ("cam.grad", "cam.shapley")]
    for _ in range(100):
        for analyzer in analyzers:
            analyzer.analyze(x)
    warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    for _ in range(1000):
        for analyzer in analyzers:
            analyzer.analyze(x)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - warm
    assert grown < 8 * 1024, f"peak memory grew by {grown} kB over 1,000 calls"


def test_ablation_passes_from_the_layer_equal_whole_passes(gapnet, monkeypatch) -> None:
    """Ablation-CAM runs only the nodes after the layer; where it cannot (a shape read from
    the input after the layer) it runs whole passes: the same maps."""
    x = x_of(2, 3, 12, 12, seed=7)
    fast = innspect.create_analyzer("cam.ablation", gapnet, layer="features.1", batch_size=4)
    expected = fast.analyze(x)

    class Whole(cam_methods._Suffix):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.usable = False

    monkeypatch.setattr(cam_methods, "_Suffix", Whole)
    slow = innspect.create_analyzer("cam.ablation", gapnet, layer="features.1", batch_size=4)
    torch.testing.assert_close(slow.analyze(x), expected)


def test_save_and_load(gapnet, tmp_path) -> None:
    x = x_of(2, 3, 12, 12, seed=8)
    for name, options in (
        ("cam.grad", {"layer": ["features.1", "features.3"], "normalize": False}),
        ("cam.kpca", {"kernel": "rbf", "gamma": 0.5}),
        ("cam.finer", {"comparison_categories": (1, 2), "alpha": 0.5}),
    ):
        analyzer = innspect.create_analyzer(name, gapnet, **options)
        analyzer.save_npz(tmp_path / f"{name}.npz")
        loaded = type(analyzer).load_npz(tmp_path / f"{name}.npz", gapnet)
        torch.testing.assert_close(loaded.analyze(x), analyzer.analyze(x))


class TwoHeads(nn.Module):
    """A model returning two outputs: the second is twice the first."""

    def __init__(self, net: GapNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.net(x)
        return y, 2 * y


def test_output_of_a_multi_output_model(gapnet) -> None:
    x = x_of(2, 3, 12, 12, seed=9)
    model = TwoHeads(gapnet)
    raw = {"normalize": False, "neuron_selection_mode": "index"}
    first = innspect.create_analyzer("cam.grad", model, output=0, **raw)
    second = innspect.create_analyzer("cam.grad", model, output=1, **raw)
    torch.testing.assert_close(second.analyze(x, 2), 2 * first.analyze(x, 2))
    plain = innspect.create_analyzer("cam.grad", gapnet, **raw).analyze(x, 2)
    torch.testing.assert_close(first.analyze(x, 2), plain)


@pytest.mark.parametrize("axis", [1, -1])
def test_ablated_copies_are_restored_and_refilled_after_in_place_writes(axis) -> None:
    """Ablation-CAM's reused buffer of copies: every pass sees the sample's output with only
    its row's channel ablated, after earlier passes put theirs back, and after a pass that
    wrote into the copies in place (a user's module) they are filled afresh."""
    raw = torch.randn(2, 5, 3, 4) if axis == 1 else torch.randn(2, 6, 5)
    channels_first = raw.movedim(axis, 1)

    def expected(i: int, channels: torch.Tensor) -> torch.Tensor:
        copies = channels_first[i : i + 1].repeat(len(channels), *[1] * (raw.dim() - 1))
        copies[torch.arange(len(channels)), channels] = -7.0
        return copies.movedim(1, axis)

    copies = cam_methods._Copies(raw, axis, rows=3)
    for i, channels, in_place in [
        (0, [0, 1, 2], False),
        (0, [3, 4], True),
        (0, [2, 0], False),
        (1, [4, 1, 3], False),
        (1, [0], False),
    ]:
        channels = torch.tensor(channels)
        with copies.ablated(i, channels, -7.0) as ablated:
            torch.testing.assert_close(ablated, expected(i, channels), rtol=0, atol=0)
            if in_place:
                ablated.mul_(2.0)
