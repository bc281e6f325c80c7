"""Agreement with LXT 2.1 (AttnLRP / CP-LRP in its efficient mode: gradient x input with
modified gradients) on a LLaMA-style decoder block written with LXT's own rule functions.

LXT patches Hugging Face model classes; transformers is not installed here, so the block
of ``tests/modern_models.Decoder`` is written out with ``lxt.efficient.rules`` exactly as
LXT's patches write LLaMA (``lxt/efficient/patches.py``: RMSNorm with the reciprocal norm
held constant, query/key/value gradients divided by 4/4/2 for AttnLRP or query/key held
constant for CP-LRP, SwiGLU with the identity rule and the product halved, or its gate
held constant for CP-LRP).
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

import innspect
from tests import modern_models


def _lxt_rules() -> ModuleType:
    """``lxt/efficient/rules.py`` alone: the package's ``__init__`` imports transformers,
    which LXT's rules do not need (``make test`` installs lxt with ``--no-deps``)."""
    try:
        version = metadata.version("lxt")
        files = metadata.files("lxt") or []
    except metadata.PackageNotFoundError:
        pytest.fail("lxt is missing: pip install --no-deps lxt==2.1 (make test installs it)")
    path = next(f for f in files if str(f).replace("\\", "/") == "lxt/efficient/rules.py")
    assert version == "2.1", f"the comparison was written against lxt 2.1, found {version}"
    spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path.locate())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = _lxt_rules()


def _rms(norm: torch.nn.RMSNorm, h: torch.Tensor) -> torch.Tensor:
    variance = h.pow(2).mean(-1, keepdim=True)
    return norm.weight * (h * rules.stop_gradient(torch.rsqrt(variance + norm.eps)))


def lxt_decoder(m: modern_models.Decoder, x: torch.Tensor, cp: bool) -> torch.Tensor:
    """``Decoder.forward`` as LXT's efficient mode patches it."""
    h = _rms(m.norm1, x)
    q, k, v = (
        p(h).unflatten(-1, (modern_models.HEADS, -1)).transpose(1, 2) for p in (m.q, m.k, m.v)
    )
    if cp:
        q, k = rules.stop_gradient(q), rules.stop_gradient(k)
    else:
        q, k, v = (
            rules.divide_gradient(q, 4),
            rules.divide_gradient(k, 4),
            rules.divide_gradient(v, 2),
        )
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + m.o(attended.transpose(1, 2).flatten(-2))
    h = _rms(m.norm2, x)
    if cp:
        gate = F.silu(rules.stop_gradient(m.w1(h)))
        weighted = gate * m.w3(h)
    else:
        gate = rules.identity_rule_implicit(F.silu, m.w1(h))
        weighted = rules.divide_gradient(gate * m.w3(h), 2)
    return m.head((x + m.w2(weighted))[:, -1])


@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp"])
def test_agrees_with_lxt_on_a_llama_style_block(method: str) -> None:
    model, x = modern_models.build("decoder"), modern_models.inputs("decoder")
    leaf = x.clone().requires_grad_(True)
    output = lxt_decoder(model, leaf, cp=method == "lrp.cp")
    torch.testing.assert_close(output, model(x), rtol=1e-10, atol=1e-12)  # same forward
    target = output.argmax(dim=1)
    output.gather(1, target[:, None]).sum().backward()
    reference = (leaf * leaf.grad).detach()
    ours = innspect.create_analyzer(method, model, epsilon=1e-12).analyze(x)
    ours = torch.as_tensor(ours)
    error = float((ours - reference).norm() / reference.norm())
    print(f"{method}: relative L2 {error:.3g} from LXT")
    assert error <= 1e-3, f"{method}: relative L2 {error:.3g} from LXT"


@pytest.mark.parametrize(
    "cases", [("llama-attn", "bert-attn", "vit-cp"), ("llama-cp",)], ids=["attn+vit", "llama-cp"]
)
def test_agrees_with_lxt_monkey_patched_models(cases: tuple[str, ...]) -> None:
    """Hugging Face LLaMA / BERT (tiny random configurations, eager attention) and
    torchvision ViT under LXT's own monkey_patch; patching is global, so the two patches
    of LLaMA run in two processes."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    result = subprocess.run(
        [sys.executable, "-m", "tests.lxt_cases", *cases],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    errors = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    assert set(errors) == set(cases), result.stdout
    for case, error in errors.items():
        assert float(error) <= 1e-3, f"{case}: relative L2 {error} from LXT"
