"""``innspect.introspect.collect``: NAPs of a PyTorch model through the engine's statistics pass,
checked against forward hooks and autograd on the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from innspect.engine.collect import Statistics
from innspect.errors import InputError
from innspect.introspect import contrastive_naps, naps, topomap_layout
from innspect.introspect.collect import NapReducer, collect


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    ).eval()


def _hooked(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None = None) -> tuple:
    """Activations (channels last) of both ReLUs and the gradients of the chosen outputs."""
    outputs = {}
    hooks = [
        model[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
        for i in (1, 4)
    ]
    try:
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    chosen = logits.argmax(1) if targets is None else targets
    score = logits.gather(1, chosen[:, None]).sum()
    grads = torch.autograd.grad(score, [outputs[1], outputs[4]])
    acts = {
        name: outputs[i].detach().permute(0, 2, 3, 1).numpy() for name, i in (("1", 1), ("4", 4))
    }
    grad_arrays = {
        name: g.permute(0, 2, 3, 1).numpy() for name, g in zip(("1", "4"), grads, strict=True)
    }
    return acts, grad_arrays


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, list[str]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(26, 1, 8, 8, generator=generator)
    labels = [["cat", "dog", "eel"][i % 3] for i in range(26)]
    return x, labels


def test_collect_equals_hooked_activations_and_aligned_autograd(data: tuple) -> None:
    model = _cnn()
    x, labels = data
    acts, grads = _hooked(model, x)
    plain = collect(model, x, groups=labels, batch_size=26)
    assert plain.layer_names == ["1", "4"]  # default: activations after linear layers
    assert plain.groups == ["cat", "dog", "eel"]
    expected = naps(acts, labels)
    mean_gradients = naps(grads, labels)  # the gradient of each sample's top logit
    for name in ("1", "4"):
        np.testing.assert_allclose(plain[name], expected[name], rtol=0, atol=1e-12)
        np.testing.assert_allclose(plain.gradients[name], mean_gradients[name], rtol=0, atol=1e-12)
    assert not collect(model, x, groups=labels, gradients=False).gradients
    aligned = collect(model, (x, labels), align=True, batch_size=26)
    expected = naps(acts, labels, gradients=grads, align=True)
    assert not np.allclose(aligned["4"], plain["4"])  # alignment changed something
    for name in ("1", "4"):
        np.testing.assert_allclose(aligned[name], expected[name], rtol=0, atol=1e-12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_streams_of_pairs_and_corpus_folders_give_the_same_naps(
    data: tuple, tmp_path: Path
) -> None:
    model = _cnn()
    x, labels = data
    reference = collect(model, x, groups=labels, layers=["4", "6"], align=True, batch_size=10)
    loader = torch.utils.data.DataLoader(list(zip(x, labels, strict=True)), batch_size=7)
    streamed = collect(model, loader, layers=["4", "6"], align=True)
    rows = []
    for k, start in enumerate(range(0, 26, 9)):
        np.save(tmp_path / f"b{k}.npy", x[start : start + 9].numpy())
        rows += [f"b{k}.npy, {labels[start]}"]  # corpus batches hold one group each
    # corpus batches must be single-group: rebuild the reference on those groups
    corpus_labels = [
        labels[start] for start in range(0, 26, 9) for _ in range(len(x[start : start + 9]))
    ]
    (tmp_path / "corpus.csv").write_text("\n".join(rows) + "\n")
    from_corpus = collect(model, tmp_path, layers=["4", "6"], align=True)
    by_corpus_labels = collect(model, x, groups=corpus_labels, layers=["4", "6"], align=True)
    for name in ("4", "6"):
        np.testing.assert_allclose(streamed[name], reference[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(from_corpus[name], by_corpus_labels[name], rtol=0, atol=1e-6)


def test_the_corpus_output_index_chooses_the_gradient(tmp_path: Path, data: tuple) -> None:
    model = _cnn()
    x, _ = data
    np.save(tmp_path / "a.npy", x[:13].numpy())
    np.save(tmp_path / "b.npy", x[13:].numpy())
    (tmp_path / "corpus.csv").write_text("a.npy,first,2\nb.npy,second,0\n")
    # batch_size 4: each corpus row fills several batches (one target index for all of them)
    result = collect(model, tmp_path, layers=["4"], align=True, batch_size=4)
    targets = torch.tensor([2] * 13 + [0] * 13)
    acts, grads = _hooked(model, x, targets)
    expected = naps(acts, ["first"] * 13 + ["second"] * 13, gradients=grads, align=True)
    np.testing.assert_allclose(result["4"], expected["4"], rtol=0, atol=1e-6)


def test_nap_reducers_serialise_and_merge_like_one_pass(data: tuple, tmp_path: Path) -> None:
    model = _cnn()
    x, labels = data
    from innspect.engine.collect import collect as engine_collect

    ids = torch.tensor([["cat", "dog", "eel"].index(g) for g in labels])
    halves = [
        engine_collect(model, (x[s], ids[s]), nodes=["4"], reducers={"naps": NapReducer()})
        for s in (slice(0, 11), slice(11, 26))
    ]
    halves[0].save_npz(tmp_path / "half.npz")
    merged = Statistics.load_npz(tmp_path / "half.npz").merge(halves[1])
    one = engine_collect(model, (x, ids), nodes=["4"], reducers={"naps": NapReducer()})
    a, b = merged["4"]["naps"].result().result(), one["4"]["naps"].result().result()
    np.testing.assert_allclose(a["node"], b["node"], rtol=0, atol=1e-12)


def test_bad_input_gets_clear_errors(data: tuple, tmp_path: Path) -> None:
    model = _cnn()
    x, labels = data
    with pytest.raises(InputError, match=r"unknown node name.*'conv9'.*nodes are: input, 0, 1, 2"):
        collect(model, x, groups=labels, layers=["conv9"])
    with pytest.raises(InputError, match="25 group labels for 26 samples"):
        collect(model, x, groups=labels[:25])
    with pytest.raises(InputError, match="align=True needs gradients=True"):
        collect(model, x, groups=labels, gradients=False, align=True)
    np.save(tmp_path / "a.npy", x[:4].numpy())
    (tmp_path / "corpus.csv").write_text("a.npy,first\nmissing.npy,second\n")
    with pytest.raises(InputError, match="line 2: missing.npy"):
        collect(model, tmp_path)
    with pytest.raises(InputError, match="group labels"):
        collect(model, [x[:4]], layers=["1"])


def test_a_network_with_channel_clusters_gets_clustered_graph_and_som_layouts() -> None:
    """48 hidden units in 4 clusters of near-identical weights: the layouts of their
    contrastive NAPs over 6 input classes place each cluster together."""
    generator = torch.Generator().manual_seed(2)
    prototypes = torch.randn(4, 10, generator=generator)
    cluster = torch.arange(48) % 4
    hidden = nn.Linear(10, 48)
    with torch.no_grad():
        hidden.weight.copy_(prototypes[cluster] + 0.05 * torch.randn(48, 10, generator=generator))
        hidden.bias.fill_(2.0)  # no dead units
    model = nn.Sequential(hidden, nn.ReLU(), nn.Linear(48, 3)).eval()
    centres = 2 * torch.randn(6, 10, generator=generator)
    labels = torch.arange(120) % 6
    x = centres[labels] + 0.3 * torch.randn(120, 10, generator=generator)
    profiles = collect(model, x, groups=labels.tolist(), gradients=False)
    assert profiles.layer_names == ["1"] and profiles["1"].shape == (6, 48)
    truth = cluster.numpy()
    for method in ("graph", "som"):
        points = topomap_layout(contrastive_naps(profiles), "1", method=method, seed=0)
        distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
        same = (truth[:, None] == truth[None]) & ~np.eye(48, dtype=bool)
        different = truth[:, None] != truth[None]
        assert distance[same].mean() / distance[different].mean() < 0.5, method
