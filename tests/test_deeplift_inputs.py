"""DeepLIFT, DeepLiftShap and occlusion with several inputs, keyword inputs with an integer
mask, and targets (the engine's input/output handling)."""

from __future__ import annotations

import torch
from captum.attr import Occlusion as CaptumOcclusion

import innspect
from tests.captum_float64 import captum_keeps_float64
from tests.test_engine_io import ImageAndAux, MaskedSequence


def _two_inputs() -> tuple[ImageAndAux, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ImageAndAux().double().eval()
    image = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    aux = torch.randn(3, 3, dtype=torch.float64)
    return model, image, aux


def test_deeplift_on_two_inputs_sums_to_delta_over_both() -> None:
    model, image, aux = _two_inputs()
    for mode in ("rescale", "reveal_cancel"):
        explanation = innspect.create_analyzer(
            "deep_lift", model, reference_inputs=0.25, nonlinear_mode=mode
        ).explain((image, aux))
        parts = explanation.attributions
        assert set(parts) == {"image", "aux"}
        total = parts["image"].sum(dim=(1, 2, 3)) + parts["aux"].sum(dim=1)
        rows = torch.arange(3)
        with torch.no_grad():
            y = model(image, aux)[rows, explanation.selected]
            y_ref = model(torch.full_like(image, 0.25), torch.full_like(aux, 0.25))
        torch.testing.assert_close(total, y - y_ref[rows, explanation.selected], rtol=0, atol=1e-8)


def test_deeplift_with_a_contrast_target_and_an_integer_mask() -> None:
    torch.manual_seed(0)
    model = MaskedSequence().double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1]])
    reference = 0.3 * torch.randn(2, 5, 4, dtype=torch.float64)

    def contrast(y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] - y[:, 2]

    attribution = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=reference, target=contrast
    ).analyze({"x": x, "mask": mask})
    assert attribution["mask"] is None
    with torch.no_grad():
        expected = contrast(model(x, mask)) - contrast(model(reference, mask))
    torch.testing.assert_close(attribution["x"].sum(dim=(1, 2)), expected, rtol=0, atol=1e-8)


def test_occlusion_on_two_inputs_equals_captum_exactly() -> None:
    model, image, aux = _two_inputs()
    explanation = innspect.create_analyzer("occlusion", model, batch_size=1).explain((image, aux))
    with captum_keeps_float64():
        expected = CaptumOcclusion(model).attribute(
            (image, aux), sliding_window_shapes=((1, 1, 1), (1,)), target=explanation.selected
        )
    assert torch.equal(explanation.attributions["image"], expected[0])
    assert torch.equal(explanation.attributions["aux"], expected[1])


def test_occlusion_and_deep_lift_shap_with_a_target() -> None:
    model, image, aux = _two_inputs()
    weights = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    ours = innspect.create_analyzer("occlusion", model, target=weights, attribute_to="aux").analyze(
        (image, aux)
    )
    expected = torch.zeros_like(aux)
    with torch.no_grad():
        clean = (model(image, aux) * weights).sum(dim=1)
        for i in range(3):
            occluded = aux.clone()
            occluded[:, i] = 0
            expected[:, i] = clean - (model(image, occluded) * weights).sum(dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    background = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    shap = innspect.create_analyzer(
        "deep_lift_shap", model, reference_inputs=background, attribute_to="image", target=weights
    ).analyze((image, aux))
    single = [
        innspect.create_analyzer(
            "deep_lift", model, reference_inputs=b, attribute_to="image", target=weights
        ).analyze((image, aux))
        for b in background
    ]
    torch.testing.assert_close(shap, torch.stack(single).mean(dim=0))


def test_deeplift_at_an_embedding_output_sums_to_delta() -> None:
    from tests.test_engine_io import TokensAndMask

    torch.manual_seed(0)
    model = TokensAndMask().double().eval()
    tokens = torch.tensor([[1, 4, 7], [2, 2, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    explanation = innspect.create_analyzer(
        "deep_lift", model, attribute_to="embed", reference_inputs=0.1
    ).explain({"tokens": tokens, "mask": mask})
    embedded = model.embed(tokens).detach()
    rows = torch.arange(2)

    def head(hidden: torch.Tensor) -> torch.Tensor:  # the model after its embedding
        return model.fc((torch.relu(hidden) * mask[..., None]).sum(1))

    with torch.no_grad():
        expected = head(embedded) - head(torch.full_like(embedded, 0.1))
    torch.testing.assert_close(
        explanation.attribution.sum(dim=(1, 2)),
        expected[rows, explanation.selected],
        rtol=0,
        atol=1e-10,
    )
