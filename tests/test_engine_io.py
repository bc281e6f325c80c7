"""Several inputs, structured outputs and general targets (issue 10 items 1-2, issue 14 item 13).

Oracles: plain autograd on the model for every gradient; for relevance methods, conservation
(LRP-Z on bias-free ReLU networks, float64) and LRP-Z = input x gradient on such networks; and a
one-input model computing the same function, which every analyzer must explain identically.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect

DOUBLE = {"dtype": torch.float64}


# -- models -------------------------------------------------------------------------------------
class ImageAndAux(nn.Module):
    """A bias-free ReLU net on an image and an auxiliary vector (two positional inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.fc1 = nn.Linear(2 * 4 * 4 + 3, 8, bias=False)
        self.fc2 = nn.Linear(8, 3, bias=False)

    def forward(self, image: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(image)).flatten(1)
        return self.fc2(torch.relu(self.fc1(torch.cat([features, aux], dim=1))))


class Concatenated(nn.Module):
    """The same function with one input: the flattened image followed by the aux vector."""

    def __init__(self, two: ImageAndAux) -> None:
        super().__init__()
        self.two = two

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.two(z[:, :36].reshape(-1, 1, 6, 6), z[:, 36:])


class MaskedSequence(nn.Module):
    """Keyword inputs: float tokens features, an integer mask, an unused default."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6, bias=False)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x)) * mask[..., None]
        return self.fc2(hidden.sum(1)) * scale


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6, bias=False)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.fc1(x))
        return {"features": features, "logits": self.fc2(features)}


@dataclasses.dataclass
class TinyOutput:
    """Like Hugging Face's ModelOutput: a dataclass of tensors."""

    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None


class TinyBert(nn.Module):
    """Hugging Face-style: embeddings of input_ids, attention_mask, attention, a classifier."""

    def __init__(self, vocab: int = 20, dim: int = 8, length: int = 6) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(length, dim, **DOUBLE) * 0.1)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.ffn = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 3)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> TinyOutput:
        hidden = self.embeddings(input_ids) + self.position
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bias = (1.0 - attention_mask[:, None, :].to(hidden.dtype)) * -1e4
        scores = self.query(hidden) @ self.key(hidden).transpose(1, 2) / hidden.shape[-1] ** 0.5
        context = torch.softmax(scores + bias, dim=-1) @ self.value(hidden)
        hidden = hidden + F.gelu(self.ffn(context))
        weights = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return TinyOutput(logits=self.classifier(pooled), hidden_states=hidden)


class TimmStyle(nn.Module):
    """timm's ViT signature: ``forward(x, attn_mask=None, is_causal=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None:
            x = x * attn_mask
        if is_causal:
            x = x.cumsum(1)
        return self.fc(torch.tanh(x))


def _seeded(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.5)
    return model.double().eval()


def _autograd(fn, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Gradient of ``fn(*inputs).sum()`` with respect to every input."""
    leaves = [x.detach().requires_grad_(True) for x in inputs]
    return torch.autograd.grad(fn(*leaves).sum(), leaves)


def _image_aux() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(3, 1, 6, 6, **DOUBLE), torch.randn(3, 3, **DOUBLE)


# -- several inputs -----------------------------------------------------------------------------
def test_two_inputs_gradient_equals_autograd_and_lrp_z_conserves() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    for options in ({}, {"reverse_keep_tensors": True}):  # one autograd pass, and the walk
        analyzer = innspect.create_analyzer("gradient", model, **options)
        ours = analyzer.analyze((image, aux), neuron_selection=None)
        assert isinstance(ours, tuple) and len(ours) == 2
        selected = model(image, aux).argmax(1)[:, None]
        expected = _autograd(lambda a, b, s=selected: model(a, b).gather(1, s), (image, aux))
        for got, want in zip(ours, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    explanation = innspect.create_analyzer("lrp.z", model).explain((image, aux))
    total = sum(a.flatten(1).sum(1) for a in explanation.attributions.values())
    torch.testing.assert_close(total, explanation.scores, rtol=1e-8, atol=1e-8)
    assert set(explanation.attributions) == {"image", "aux"}


@pytest.mark.parametrize(
    "name",
    [
        "gradient",
        "input_t_gradient",
        "deconvnet",
        "guided_backprop",
        "lrp.z",
        "lrp.epsilon",
        "lrp.alpha_2_beta_1",
        "lrp.sequential_preset_a",
        "deep_taylor",
        "integrated_gradients",
    ],
)
def test_every_analyzer_explains_two_inputs_as_the_same_one_input_function(name: str) -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    options = {"steps": 4} if name == "integrated_gradients" else {}
    image_part, aux_part = innspect.create_analyzer(name, model, **options).analyze((image, aux))
    z = torch.cat([image.flatten(1), aux], dim=1)
    single = innspect.create_analyzer(name, Concatenated(model), **options).analyze(z)
    torch.testing.assert_close(image_part.flatten(1), single[:, :36], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(aux_part, single[:, 36:], rtol=1e-10, atol=1e-12)


def test_attribute_to_one_input_and_numpy_in_numpy_out() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    analyzer = innspect.create_analyzer("gradient", model, attribute_to="aux")
    result = analyzer.analyze((image.numpy(), aux.numpy()))
    assert isinstance(result, np.ndarray) and result.shape == aux.shape
    both = innspect.create_analyzer("gradient", model).analyze((image, aux))
    np.testing.assert_allclose(result, both[1].numpy(), rtol=1e-12)


def test_keyword_inputs_with_an_integer_mask() -> None:
    model = _seeded(MaskedSequence())
    torch.manual_seed(2)
    x = torch.randn(2, 5, 4, **DOUBLE)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    inputs = {"mask": mask, "x": x}  # any key order
    ours = innspect.create_analyzer("gradient", model, neuron_selection_mode="all").analyze(inputs)
    assert set(ours) == {"x", "mask"} and ours["mask"] is None  # the mask passes through
    (expected,) = _autograd(lambda a: model(a, mask), (x,))
    torch.testing.assert_close(ours["x"], expected, rtol=1e-12, atol=1e-12)
    assert bool((ours["x"][0, 3:] == 0).all())  # masked positions get nothing
    explanation = innspect.create_analyzer("lrp.z", model).explain(inputs)
    torch.testing.assert_close(
        explanation.attribution.flatten(1).sum(1), explanation.scores, rtol=1e-8, atol=1e-8
    )


def test_forward_defaults_the_caller_does_not_pass_are_not_inputs() -> None:
    model = _seeded(TimmStyle())
    x = torch.randn(3, 4, **DOUBLE)
    ours = innspect.create_analyzer("gradient", model, neuron_selection_mode="all").analyze(x)
    (expected,) = _autograd(model, (x,))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    mask = torch.rand(
        3, 4, **DOUBLE
    )  # passed by keyword, it is an input (attributed: floating point)
    result = innspect.create_analyzer("gradient", model, neuron_selection_mode="all").analyze(
        {"x": x, "attn_mask": mask}
    )
    expected_x, expected_mask = _autograd(lambda a, m: model(a, attn_mask=m), (x, mask))
    torch.testing.assert_close(result["x"], expected_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result["attn_mask"], expected_mask, rtol=1e-12, atol=1e-12)

    class WithKwargs(TimmStyle):
        def forward(self, x, attn_mask=None, *args, **kwargs):  # *args/**kwargs: no inputs
            return super().forward(x, attn_mask)

    other = WithKwargs().double()
    other.load_state_dict(model.state_dict())
    ours = innspect.create_analyzer("gradient", other, neuron_selection_mode="all").analyze(x)
    (expected,) = _autograd(model, (x,))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


# -- outputs ------------------------------------------------------------------------------------
def test_dict_output_defaults_to_logits_and_output_picks_another() -> None:
    model = _seeded(DictOutput())
    x = torch.randn(3, 5, **DOUBLE)
    ours = innspect.create_analyzer("gradient", model, neuron_selection_mode="all").analyze(x)
    (expected,) = _autograd(lambda a: model(a)["logits"], (x,))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    features = innspect.create_analyzer(
        "gradient", model, output="features", neuron_selection_mode="all"
    ).analyze(x)
    (expected,) = _autograd(lambda a: model(a)["features"], (x,))
    torch.testing.assert_close(features, expected, rtol=1e-12, atol=1e-12)
    explanation = innspect.create_analyzer("lrp.z", model).explain(x)
    torch.testing.assert_close(
        explanation.attribution.sum(1), explanation.scores, rtol=1e-8, atol=1e-8
    )


def test_output_callable_and_ambiguous_outputs() -> None:
    model = _seeded(DictOutput())
    x = torch.randn(3, 5, **DOUBLE)

    def combined(result: dict[str, torch.Tensor]) -> torch.Tensor:
        return result["logits"] + result["features"][:, :3]

    for options in ({}, {"reverse_keep_tensors": True}):
        analyzer = innspect.create_analyzer(
            "gradient", model, output=combined, neuron_selection_mode="all", **options
        )
        (expected,) = _autograd(lambda a: combined(model(a)), (x,))
        torch.testing.assert_close(analyzer.analyze(x), expected, rtol=1e-12, atol=1e-12)

    class TwoTensors(nn.Module):
        def forward(self, x):
            return x * 2, x - 1

    with pytest.raises(innspect.OutputSelectionError, match="returns 2 tensors.*0, 1"):
        innspect.create_analyzer("gradient", TwoTensors()).analyze(x)
    with pytest.raises(innspect.OutputSelectionError, match="'typo' is not returned.*'features'"):
        innspect.create_analyzer("gradient", model, output="typo").analyze(x)
    second = innspect.create_analyzer("gradient", TwoTensors(), output=1).analyze(x)
    assert bool((second.abs().sum(1) == 1).all())  # one-hot gradient of x - 1


def test_softmax_detection_follows_the_chosen_output() -> None:
    class LogitsAndProbabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            logits = self.fc(x)
            return logits, torch.softmax(logits, dim=1)

    model = LogitsAndProbabilities().double()
    x = torch.randn(2, 4, **DOUBLE)
    innspect.create_analyzer("gradient", model, output=0).analyze(x)  # logits: fine
    with pytest.raises(innspect.OutputActivationError, match="softmax"):
        innspect.create_analyzer("gradient", model, output=1).analyze(x)
    with pytest.raises(innspect.OutputActivationError, match="softmax"):
        innspect.create_analyzer("lrp.z", model, output=lambda r: r[1]).analyze(x)


# -- targets ------------------------------------------------------------------------------------
def test_target_weights_and_callables_give_the_gradient_of_that_scalar() -> None:
    model = _seeded(DictOutput())
    x = torch.randn(4, 5, **DOUBLE)
    weights = torch.randn(4, 3, **DOUBLE)
    targets = {
        "weights": (weights, lambda y: (weights * y).sum(1)),
        "contrast": (lambda y: y[:, 0] - y[:, 2], lambda y: y[:, 0] - y[:, 2]),
        "cosine": (
            lambda y: F.cosine_similarity(y, torch.ones(1, 3, **DOUBLE), dim=1),
            lambda y: F.cosine_similarity(y, torch.ones(1, 3, **DOUBLE), dim=1),
        ),
    }
    for target, scalar in targets.values():
        (expected,) = _autograd(lambda a, s=scalar: s(model(a)["logits"]), (x,))
        for options in ({}, {"reverse_keep_tensors": True}):
            analyzer = innspect.create_analyzer("gradient", model, **options)
            explanation = analyzer.explain(x, target=target)
            torch.testing.assert_close(explanation.attribution, expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(explanation.scores, scalar(model(x)["logits"]).detach())
        baseline = innspect.create_analyzer("gradient.baseline", model, target=target)
        torch.testing.assert_close(baseline.analyze(x), expected, rtol=1e-12, atol=1e-12)


def test_lrp_z_of_a_contrast_is_input_times_its_gradient() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()

    def contrast(y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] - y[:, 1]

    lrp = innspect.create_analyzer("lrp.z", model, target=contrast).explain((image, aux))
    expected = _autograd(lambda a, b: contrast(model(a, b)), (image, aux))
    for name, x, gradient in zip(("image", "aux"), (image, aux), expected, strict=True):
        torch.testing.assert_close(lrp.attributions[name], x * gradient, rtol=1e-8, atol=1e-10)
    total = sum(a.flatten(1).sum(1) for a in lrp.attributions.values())
    torch.testing.assert_close(total, lrp.scores, rtol=1e-8, atol=1e-10)  # sums to t
    # A non-linear t: relevance starts from y * dt/dy, which sums to k t for t homogeneous
    # of degree k (Euler); the README documents it with this product (k = 2).
    product = innspect.create_analyzer("lrp.z", model, target=lambda y: y[:, 0] * y[:, 1])
    explanation = product.explain((image, aux))
    total = sum(a.flatten(1).sum(1) for a in explanation.attributions.values())
    torch.testing.assert_close(total, 2 * explanation.scores, rtol=1e-8, atol=1e-10)


def test_wrappers_take_targets_and_several_inputs() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    weights = torch.randn(3, 3, **DOUBLE)  # per-sample weights: each point keeps its sample's row
    steps = 3
    ig = innspect.create_analyzer("integrated_gradients", model, steps=steps, batch_size=4)
    ours = ig.analyze((image, aux), target=weights)
    mean = [torch.zeros_like(image), torch.zeros_like(aux)]
    for k in range(steps):
        grads = _autograd(
            lambda a, b: (weights * model(a, b)).sum(1), (image * k / steps, aux * k / steps)
        )
        mean = [m + g / steps for m, g in zip(mean, grads, strict=True)]
    torch.testing.assert_close(ours[0], mean[0] * image, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], mean[1] * aux, rtol=1e-10, atol=1e-12)
    smooth = innspect.create_analyzer(
        "smoothgrad", model, augment_by_n=2, noise_scale=0.0, attribute_to=["aux"]
    )
    (expected,) = _autograd(lambda b: (weights * model(image, b)).sum(1), (aux,))
    (result,) = smooth.analyze((image, aux), target=weights)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)


# -- a Hugging Face-style model at its embeddings -----------------------------------------------
def _embedding_gradient(model: TinyBert, ids, mask, neuron: torch.Tensor) -> torch.Tensor:
    """Autograd oracle: the embedding output replaced by a leaf through a forward hook."""
    leaf = model.embeddings(ids).detach().requires_grad_(True)
    handle = model.embeddings.register_forward_hook(lambda *_: leaf)
    try:
        logits = model(ids, attention_mask=mask).logits
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, neuron[:, None]).sum(), leaf)
    return gradient, leaf.detach()


def test_hugging_face_style_model_explained_at_its_embeddings() -> None:
    torch.manual_seed(3)
    model = _seeded(TinyBert())
    ids = torch.randint(0, 20, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    inputs = {"input_ids": ids, "attention_mask": mask}
    neuron = model(ids, attention_mask=mask).logits.argmax(1)
    gradient, embedded = _embedding_gradient(model, ids, mask, neuron)
    for options in ({}, {"reverse_keep_tensors": True}):
        analyzer = innspect.create_analyzer("gradient", model, attribute_to="embeddings", **options)
        torch.testing.assert_close(analyzer.analyze(inputs), gradient, rtol=1e-10, atol=1e-12)
    per_token = innspect.create_analyzer(
        "input_t_gradient", model, attribute_to="embeddings", attribute_sum_axis=-1
    ).analyze(inputs)
    assert per_token.shape == ids.shape
    torch.testing.assert_close(per_token, (embedded * gradient).sum(-1), rtol=1e-10, atol=1e-12)
    # numpy in, numpy out; ids alone (no mask): the default mask of ones is used
    alone = innspect.create_analyzer("gradient", model, attribute_to="embeddings").analyze(
        {"input_ids": ids.numpy()}
    )
    full_neuron = model(ids).logits.argmax(1)
    expected, _ = _embedding_gradient(model, ids, None, full_neuron)
    assert isinstance(alone, np.ndarray)
    np.testing.assert_allclose(alone, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_integrated_gradients_at_an_embedding_output() -> None:
    torch.manual_seed(4)
    model = _seeded(TinyBert())
    ids = torch.randint(0, 20, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    neuron = model(ids, attention_mask=mask).logits.argmax(1)
    ig = innspect.create_analyzer("integrated_gradients", model, steps=2, attribute_to="embeddings")
    ours = ig.analyze((ids, mask))
    embedded = model.embeddings(ids).detach()
    total = torch.zeros_like(embedded)
    for k in range(2):
        point = (embedded * k / 2).requires_grad_(True)
        handle = model.embeddings.register_forward_hook(lambda *_, p=point: p)
        try:
            logits = model(ids, attention_mask=mask).logits
        finally:
            handle.remove()
        total += torch.autograd.grad(logits.gather(1, neuron[:, None]).sum(), point)[0] / 2
    torch.testing.assert_close(ours, total * embedded, rtol=1e-10, atol=1e-12)


class TokensAndMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = torch.relu(self.embed(tokens))
        if mask is not None:
            hidden = hidden * mask[..., None]
        return self.fc(hidden.sum(1))


def test_lrp_at_an_embedding_output_matches_the_token_relevance() -> None:
    model = _seeded(TokensAndMask())
    tokens = torch.tensor([[1, 4, 7], [2, 2, 9]])
    # wave 1: a model with one integer input gets relevance per token (embedding rule)
    per_token = innspect.create_analyzer("lrp.z", model).explain(tokens)
    at_node = innspect.create_analyzer(
        "lrp.z", model, attribute_to="embed", attribute_sum_axis=-1
    ).explain(tokens)
    torch.testing.assert_close(at_node.attribution, per_token.attribution, rtol=1e-12, atol=0)
    torch.testing.assert_close(at_node.attribution.sum(1), at_node.scores, rtol=1e-8, atol=1e-8)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    masked = innspect.create_analyzer("lrp.z", model, attribute_to="embed").analyze(
        {"tokens": tokens, "mask": mask}
    )
    assert masked.shape == (2, 3, 4) and bool((masked[mask == 0] == 0).all())
    scores = model(tokens, mask).max(1).values
    torch.testing.assert_close(masked.sum((1, 2)), scores.detach(), rtol=1e-8, atol=1e-8)


def test_input_and_random_baselines_follow_the_inputs() -> None:
    image, aux = _image_aux()
    model = _seeded(ImageAndAux())
    same = innspect.create_analyzer("input", model).analyze((image, aux))
    assert torch.equal(same[0], image) and torch.equal(same[1], aux)
    noise = innspect.create_analyzer("random", model, attribute_to="aux", seed=0).analyze(
        {"image": image, "aux": aux}
    )
    assert noise.shape == aux.shape
    with pytest.raises(innspect.InputError, match="attributes inputs only"):
        innspect.create_analyzer("input", model, attribute_to="conv").analyze((image, aux))


# -- bad input ----------------------------------------------------------------------------------
def test_bad_structures_and_names_are_refused_clearly() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    gradient = innspect.create_analyzer("gradient", model)
    with pytest.raises(innspect.InputError, match="3 inputs given.*takes 2"):
        gradient.analyze((image, aux, aux))
    with pytest.raises(innspect.InputError, match="'aux' is missing"):
        gradient.analyze(image)
    with pytest.raises(innspect.InputError, match="unknown input 'extra'.*image, aux"):
        gradient.analyze({"image": image, "aux": aux, "extra": aux})
    with pytest.raises(innspect.InputError, match="disagree on the batch size"):
        gradient.analyze((image, aux[:2]))
    with pytest.raises(innspect.InputError, match="'nowhere' names neither an input"):
        innspect.create_analyzer("gradient", model, attribute_to="nowhere").analyze((image, aux))
    with pytest.raises(innspect.OutputSelectionError, match=r"do not broadcast.*\(3, 3\)"):
        gradient.analyze((image, aux), target=torch.ones(4, **DOUBLE))
    with pytest.raises(innspect.OutputSelectionError, match=r"one value per sample, shape \(3,\)"):
        gradient.analyze((image, aux), target=lambda y: y.sum())
    with pytest.raises(innspect.NeuronSelectionError, match="target= replaces"):
        innspect.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
            (image, aux), neuron_selection=0, target=torch.ones(3, **DOUBLE)
        )


def test_integer_inputs_asked_for_attribution_are_refused_with_a_hint() -> None:
    model = _seeded(TinyBert())
    ids = torch.randint(0, 20, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": mask}
    with pytest.raises(innspect.InputError, match="no input is floating point.*'embeddings'"):
        innspect.create_analyzer("gradient", model).analyze(inputs)
    for name in ("gradient", "lrp.z"):
        analyzer = innspect.create_analyzer(name, model, attribute_to="attention_mask")
        with pytest.raises(innspect.InputError, match="'attention_mask' is torch.int64.*'embed"):
            analyzer.analyze(inputs)
    masked = _seeded(MaskedSequence())
    with pytest.raises(innspect.InputError, match="'mask' is torch.int64"):
        innspect.create_analyzer("gradient", masked, attribute_to=["x", "mask"]).analyze(
            {"x": torch.randn(2, 5, 4, **DOUBLE), "mask": torch.ones(2, 5, dtype=torch.long)}
        )


def test_options_are_saved_and_the_graph_follows_the_call() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    analyzer = innspect.create_analyzer("lrp.epsilon", model, attribute_to=["aux", "image"])
    name, state = analyzer.save()
    restored = innspect.Analyzer.load(name, state, model)
    for got, want in zip(
        restored.analyze((image, aux)), analyzer.analyze((image, aux)), strict=True
    ):
        torch.testing.assert_close(got, want)
    weighted = innspect.create_analyzer(
        "gradient", model, target=torch.tensor([1.0, -1.0, 0.0], **DOUBLE), output=()
    )
    name, state = weighted.save()  # weights and the output path as JSON lists
    restored = innspect.Analyzer.load(name, state, model)
    for got, want in zip(
        restored.analyze((image, aux)), weighted.analyze((image, aux)), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the same analyzer called by position and by keyword gives the same attributions
    by_keyword = analyzer.analyze({"aux": aux, "image": image})
    torch.testing.assert_close(by_keyword[0], analyzer.analyze((image, aux))[0])


class LoopWithAux(nn.Module):
    """torch.fx cannot trace the loop over a shape; torch.export captures it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor, aux: torch.Tensor, flag: bool = True):
        hidden = self.a(x)
        for i in range(x.shape[1]):
            hidden = hidden + x[:, i : i + 1] * i
        return {"logits": hidden + self.b(aux), "doubled": aux * 2}


def test_export_fallback_with_keyword_inputs_and_a_dict_output() -> None:
    model = _seeded(LoopWithAux())
    x, aux = torch.randn(3, 4, **DOUBLE), torch.randn(3, 2, **DOUBLE)
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="all")
    ours = analyzer.analyze({"aux": aux, "x": x})
    expected = _autograd(lambda a, b: model(a, b)["logits"], (x, aux))
    torch.testing.assert_close(ours["x"], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours["aux"], expected[1], rtol=1e-12, atol=1e-12)


def test_python_values_in_the_inputs_are_fixed_arguments() -> None:
    torch.manual_seed(5)
    model = _seeded(TinyBert())
    ids = torch.randint(0, 20, (2, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    analyzer = innspect.create_analyzer("gradient", model, attribute_to="embeddings")
    plain = analyzer.analyze({"input_ids": ids, "attention_mask": mask})
    fixed = analyzer.analyze(
        {"input_ids": ids, "token_type_ids": None, "attention_mask": mask, "return_dict": True}
    )
    torch.testing.assert_close(fixed, plain, rtol=0, atol=0)
    scaled = _seeded(TimmStyle())
    x = torch.randn(3, 4, **DOUBLE)
    causal = innspect.create_analyzer("gradient", scaled, neuron_selection_mode="all")
    result = causal.analyze((x, None, True))  # positional: attn_mask=None, is_causal=True
    assert result[1] is None and result[2] is None
    (expected,) = _autograd(lambda a: scaled(a, None, True), (x,))
    torch.testing.assert_close(result[0], expected, rtol=1e-12, atol=1e-12)
    (plain_x,) = _autograd(scaled, (x,))
    assert not torch.allclose(result[0], plain_x)  # is_causal=True really was used
    baseline = innspect.create_analyzer("gradient.baseline", scaled, neuron_selection_mode="all")
    torch.testing.assert_close(baseline.analyze((x, None, True))[0], expected)
    torch.testing.assert_close(causal.analyze(x), plain_x, rtol=1e-12, atol=1e-12)


class LoopWithFlag(LoopWithAux):
    def forward(self, x: torch.Tensor, aux: torch.Tensor, flag: bool = True):
        result = super().forward(x, aux)
        return {"logits": result["logits"] * (2.0 if flag else 1.0)}


def test_export_fallback_with_a_fixed_python_argument() -> None:
    model = _seeded(LoopWithFlag())
    x, aux = torch.randn(3, 4, **DOUBLE), torch.randn(3, 2, **DOUBLE)
    ours = innspect.create_analyzer("gradient", model, neuron_selection_mode="all").analyze(
        (x, aux, False)
    )
    expected = _autograd(lambda a, b: model(a, b, False)["logits"], (x, aux))
    torch.testing.assert_close(ours[0], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], expected[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gradient", "lrp.z"])
def test_an_input_and_an_inner_node_together(name: str) -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()

    def run(attribute_to):
        return innspect.create_analyzer(name, model, attribute_to=attribute_to).analyze(
            (image, aux)
        )

    at_image, at_conv = run(["image", "conv"])  # the walk goes on past the inner node
    torch.testing.assert_close(at_image, run("image"), rtol=1e-12, atol=0)
    torch.testing.assert_close(at_conv, run("conv"), rtol=1e-12, atol=0)
    assert at_conv.shape == (3, 2, 4, 4)


@dataclasses.dataclass
class DictLikeOutput(OrderedDict):
    """Like Hugging Face's ModelOutput: a dataclass that is also an ordered dict."""

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if getattr(self, item.name) is not None:
                self[item.name] = getattr(self, item.name)


class ReturnsDictLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> DictLikeOutput:
        hidden = torch.relu(x)
        return DictLikeOutput(logits=self.fc(hidden), hidden=hidden)


def test_model_output_like_results_by_key_attribute_and_index() -> None:
    model = _seeded(ReturnsDictLike())
    x = torch.randn(3, 4, **DOUBLE)
    (expected,) = _autograd(lambda a: model(a).logits[:, :2], (x,))
    for output in (lambda r: r.logits[:, :2], lambda r: r["logits"][:, :2], lambda r: r[0][:, :2]):
        analyzer = innspect.create_analyzer(
            "gradient", model, output=output, neuron_selection_mode="all"
        )
        torch.testing.assert_close(analyzer.analyze(x), expected, rtol=1e-12, atol=1e-12)
    (expected,) = _autograd(lambda a: model(a).logits, (x,))  # default: "logits"
    default = innspect.create_analyzer("gradient", model, neuron_selection_mode="all")
    torch.testing.assert_close(default.analyze(x), expected, rtol=1e-12, atol=1e-12)


def test_conservation_report_counts_every_input() -> None:
    from innspect.evaluation.conservation import conservation_report

    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    report = conservation_report(innspect.create_analyzer("lrp.z", model), (image, aux))
    torch.testing.assert_close(report.input_total, report.output_total, rtol=1e-8, atol=1e-10)


def test_attribute_to_a_node_returning_a_tuple_names_its_readers() -> None:
    class Splits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            first, second = torch.split(x, 2, dim=1)
            return self.fc(torch.cat([second, first], dim=1))

    model = _seeded(Splits())
    x = torch.randn(2, 4, **DOUBLE)
    with pytest.raises(innspect.InputError, match="output is a tuple.*'getitem"):
        innspect.create_analyzer("gradient", model, attribute_to="split").analyze(x)
    # the node taking a tensor out of it works
    result = innspect.create_analyzer("gradient", model, attribute_to="getitem").analyze(x)
    assert result.shape == (2, 2)


def test_integrated_gradients_callable_target_may_hold_per_sample_data() -> None:
    model = _seeded(ImageAndAux())
    image, aux = _image_aux()
    reference = torch.randn(3, 3, **DOUBLE)  # one reference output per sample

    def similarity(y: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(y, reference, dim=1)

    steps = 3
    # batch_size 4 < 3 samples x 3 points: chunks cut through the samples of a point
    ig = innspect.create_analyzer("integrated_gradients", model, steps=steps, batch_size=4)
    ours = ig.analyze((image, aux), target=similarity)
    mean = [torch.zeros_like(image), torch.zeros_like(aux)]
    for k in range(steps):
        grads = _autograd(
            lambda a, b: similarity(model(a, b)), (image * k / steps, aux * k / steps)
        )
        mean = [m + g / steps for m, g in zip(mean, grads, strict=True)]
    torch.testing.assert_close(ours[0], mean[0] * image, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], mean[1] * aux, rtol=1e-10, atol=1e-12)
