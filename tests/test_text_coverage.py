"""benchmarks/text_coverage.py, the table of docs/coverage.md's "Explaining generated text":
its checks pass on right matrices and fail on wrong ones, and it rewrites only its section."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from innspect.text import explain_generation

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def coverage():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import text_coverage

        yield text_coverage
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "method"),
    [
        ("gpt2", "gradient"), ("t5", "occlusion"), ("llama", "lrp.attn"), ("opt", "lrp.cp"),
        ("gpt_neo", "lrp.epsilon"),  # its causal mask is a where(), refused until wave 3
    ],
)  # fmt: skip
def test_checks_pass_on_the_right_matrix_and_fail_on_a_wrong_one(
    coverage, family: str, method: str
) -> None:
    model = coverage.build(family)
    prompt = torch.tensor([[7, 21, 9, 40, 13, 5]])
    result = explain_generation(model, prompt, max_new_tokens=2, method=method, stop_at_eos=False)
    what, failure = coverage.own_check(method, model, prompt, result)
    assert what and failure == "", failure
    # A wrong matrix (one entry moved, as a batching or rule error would) is caught; for
    # lrp.cp, a model whose relevance leaks (a bias left in) is.
    if method == "lrp.cp":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.fill_(0.3)
        original = coverage._bias_free
        coverage._bias_free = lambda m: m  # the check runs on the biased model
        try:
            _, failure = coverage.own_check(method, model, prompt, result)
        finally:
            coverage._bias_free = original
    else:
        # Moved by 5 % of the terms the entry sums (GPT-2's summed gradient is ~0 per token).
        size = result.matrix.abs().max()
        if method in ("gradient", "input_t_gradient", "integrated_gradients", "occlusion"):
            size = coverage.by_hand(method, model, result)[1].max()
        wrong = result.matrix.clone()
        wrong[-1, 1] += 0.05 * size
        _, failure = coverage.own_check(
            method, model, prompt, dataclasses.replace(result, matrix=wrong)
        )
    assert failure


def test_only_its_section_is_rewritten(coverage) -> None:
    text = "# Coverage\n\ntable\n"
    first = coverage.insert(text, f"{coverage.START}\nold\n{coverage.END}\n")
    second = coverage.insert(first, f"{coverage.START}\nnew\n{coverage.END}\n")
    assert second.startswith(text) and "new" in second and "old" not in second
    assert second.count(coverage.START) == 1


def test_lxt_check_passes_on_the_right_matrix_and_fails_on_a_perturbed_one(
    coverage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `= LXT` check of the lrp.attn cells: LXT 2.1 (in a process of its own) agrees with
    innspect's rows on LLaMA, and a matrix with one entry moved is caught."""
    model = coverage.build("llama")
    prompt = torch.tensor([[7, 21, 9, 40, 13, 5]])
    result = explain_generation(
        model,
        prompt,
        max_new_tokens=2,
        method="lrp.attn",
        epsilon=coverage.LXT_EPSILON,
        stop_at_eos=False,
    )
    rows = coverage.lxt_rows("lrp.attn", model, result)
    assert rows.shape == result.matrix.shape
    assert coverage._relative(rows, result.matrix) <= coverage.LXT_TOLERANCE
    monkeypatch.setattr(coverage, "lxt_rows", lambda *args: rows)  # one LXT process
    distance, failure = coverage.lxt_check("lrp.attn", model, result)
    assert failure == "" and distance <= coverage.LXT_TOLERANCE
    wrong = result.matrix.clone()
    wrong[-1, 1] += 0.05 * wrong.abs().max()
    distance, failure = coverage.lxt_check(
        "lrp.attn", model, dataclasses.replace(result, matrix=wrong)
    )
    assert distance > coverage.LXT_TOLERANCE and "from LXT" in failure
