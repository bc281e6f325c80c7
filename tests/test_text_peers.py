"""innspect.text.explain_generation against its peers, row by row, in float64 on a tiny random
LLaMA-architecture model with a trained tokenizer:

- Captum 0.9 ``LLMGradientAttribution`` (``LayerGradientXActivation`` and
  ``LayerIntegratedGradients`` at the token embeddings, summed over the embedding axis: one
  forward and backward per generated token, explaining its log-probability) and
  ``LLMAttribution(FeatureAblation)`` (each prompt token replaced by the baseline token);
  Captum attributes the prompt's tokens only, so the prompt's columns are compared.
- LXT 2.1 (efficient mode: gradient x input after ``monkey_patch``) for AttnLRP and CP-LRP,
  every column. LXT's patches change transformers' classes for good, so each runs in a
  process of its own: ``python -m tests.test_text_peers lrp.attn`` prints the relative L2
  distance of each row.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
import torch

from innspect.text import explain_generation
from tests.test_text_generation import PROMPT, llama, tokenizer

GENERATED = 4


@pytest.fixture(scope="module")
def setting() -> tuple:
    tok = tokenizer()
    model = llama()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    return model, tok, ids


def _captum_rows(model, tok, ids, generated, layer_class, **kwargs) -> torch.Tensor:
    from captum.attr import LLMGradientAttribution, TextTokenInput

    method = layer_class(model, model.model.embed_tokens)
    attribution = LLMGradientAttribution(method, tok)
    inp = TextTokenInput(PROMPT, tok)
    assert torch.equal(inp.inp_tensor, ids)
    result = attribution.attribute(inp, target=generated, **kwargs)
    return result.token_attr.double()


@pytest.mark.slow
def test_gradient_x_input_and_integrated_gradients_equal_captum(setting: tuple) -> None:
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    model, tok, ids = setting
    length = ids.shape[1]
    ours = explain_generation(
        model,
        ids,
        max_new_tokens=GENERATED,
        method="input_t_gradient",
        score="log_prob",
        stop_at_eos=False,
    )
    generated = ours.generated_ids
    captum = _captum_rows(model, tok, ids, generated, LayerGradientXActivation)
    assert captum.shape == (GENERATED, length)
    torch.testing.assert_close(ours.matrix[:, :length], captum, rtol=1e-7, atol=1e-12)
    assert ours.matrix[1:, length:].abs().sum() > 0  # and the earlier generated tokens
    # Captum's integrated gradients: 50 Gauss-Legendre points from token 0's embedding at
    # the prompt's positions (the generated tokens stay at theirs: baseline_span="prompt").
    ours = explain_generation(
        model,
        ids,
        generated_ids=generated,
        method="integrated_gradients",
        score="log_prob",
        baseline_token=0,
        baseline_span="prompt",
        steps=50,
        integration="gausslegendre",
    )
    captum = _captum_rows(model, tok, ids, generated, LayerIntegratedGradients)
    torch.testing.assert_close(ours.matrix[:, :length], captum, rtol=1e-7, atol=1e-12)
    assert (ours.matrix[:, length:] == 0).all()


def test_token_ablation_equals_captum_feature_ablation(setting: tuple) -> None:
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    model, tok, ids = setting
    length = ids.shape[1]
    ours = explain_generation(
        model,
        ids,
        max_new_tokens=GENERATED,
        method="occlusion",
        score="log_prob",
        baseline_token=1,
        stop_at_eos=False,
    )
    attribution = LLMAttribution(FeatureAblation(model), tok)
    result = attribution.attribute(
        TextTokenInput(PROMPT, tok, baselines=1), target=ours.generated_ids
    )
    # Captum keeps the attributions in float32 (LLMAttribution allocates them so).
    captum = result.token_attr.double()
    assert captum.shape == (GENERATED, length)
    torch.testing.assert_close(ours.matrix[:, :length], captum, rtol=1e-6, atol=1e-7)
    # Captum's sequence attribution is the sum of the log-probabilities' changes.
    torch.testing.assert_close(
        ours.matrix[:, :length].sum(0), result.seq_attr.double(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_attnlrp_and_cp_lrp_rows_equal_lxt() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    # One process per patch (they change the same classes), run side by side.
    processes = {
        method: subprocess.Popen(
            [sys.executable, "-m", "tests.test_text_peers", method],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )
        for method in ("lrp.attn", "lrp.cp")
    }
    for method, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        errors = [float(line.split()[1]) for line in out.splitlines() if line.startswith("row")]
        assert len(errors) == GENERATED, out
        assert max(errors) <= 1e-4, f"{method}: relative L2 per row {errors} from LXT"


def _lxt_distances(method: str) -> list[float]:
    """innspect's matrix, then LXT's row by row (after its patches): relative L2 each."""
    lxt_llama = _lxt_llama()

    model = llama("eager")
    ids = tokenizer()(PROMPT, return_tensors="pt")["input_ids"]
    ours = explain_generation(
        model, ids, max_new_tokens=GENERATED, method=method, epsilon=1e-12, stop_at_eos=False
    )
    patch = lxt_llama.cp_LRP if method == "lrp.cp" else lxt_llama.attnLRP
    # lxt.efficient.monkey_patch(module, patch_map=patch) is this loop.
    for target, apply in patch.items():
        assert apply(target), f"LXT could not patch {target}"
    sequence, length = ours.sequence_ids, ids.shape[1]
    distances = []
    for k in range(GENERATED):
        leaf = model.model.embed_tokens(sequence).detach().requires_grad_(True)
        logits = model(inputs_embeds=leaf).logits
        logits[0, length + k - 1, ours.generated_ids[k]].backward()
        reference = (leaf * leaf.grad).sum(-1)[0].detach()
        distances.append(float((ours.matrix[k] - reference).norm() / reference.norm()))
    return distances


def _lxt_llama() -> ModuleType:
    """``lxt.efficient.models.llama`` (LXT 2.1's LLaMA patch maps) without the packages'
    ``__init__``s, which import every model LXT patches (torchvision's ViT, Gemma 3...):
    seconds of imports in each process."""
    assert metadata.version("lxt") == "2.1", "the comparison was written against lxt 2.1"
    root = Path(importlib.util.find_spec("lxt").submodule_search_locations[0])
    for name, folder in (
        ("lxt.efficient", "efficient"),
        ("lxt.efficient.models", "efficient/models"),
    ):
        package = ModuleType(name)
        package.__path__ = [str(root / folder)]
        sys.modules.setdefault(name, package)
    return importlib.import_module("lxt.efficient.models.llama")


if __name__ == "__main__":
    for row, distance in enumerate(_lxt_distances(sys.argv[1])):
        print(f"row{row} {distance:.6e}", flush=True)
