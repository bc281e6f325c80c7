"""Which Hugging Face language-model families ``innspect.text.explain_generation`` explains,
each cell checked: the "Explaining generated text" table of docs/coverage.md.

Usage: ``python benchmarks/text_coverage.py [--families NAME...] [--out docs/coverage.md]``
(``make coverage`` runs it after the image and classification table). Tiny random
configurations in float64 (2 layers, width 32), a prompt of 6 token ids, 3 tokens generated
greedily. Each method's matrix is checked against something computed without
``explain_generation``:

- ``gradient``, ``input_t_gradient``: every row equals autograd's gradient of its step's logit
  at the token embeddings (times the embeddings), summed per token;
- ``integrated_gradients``: every row equals the integral computed by hand (8 points
  ``j / 8`` from the baseline token's embeddings, Sundararajan et al. 2017);
- ``occlusion``: every row equals the logit drop with each token replaced by the baseline
  token, one model call per token;
- ``lrp.epsilon``, ``lrp.attn``: the first and the last rows (a batched walk) equal a
  separate single-logit analysis of that step alone;
- ``lrp.cp``: on a copy with every bias and position table zeroed, every row sums to its
  logit (epsilon 1e-100; Ali et al. 2022);
- ``lrp.attn``, ``lrp.cp`` on the families LXT 2.1's efficient mode patches (LLaMA, Qwen2,
  Qwen3, GPT-2): besides, every row equals LXT's relevance of that step (gradient x input
  at the token embeddings after ``lxt.efficient.monkey_patch`` with its ``attnLRP`` /
  ``cp_LRP`` map, one backward per step), relative L2 <= 1e-6 (issue 28 asks 1e-4, LXT's
  documented agreement; these families agree to 1e-9..5e-8), with innspect's matrix
  recomputed at epsilon 1e-12 on the same continuation (LXT's efficient mode has no
  stabiliser in linear layers; the default 1e-6 moves LLaMA's rows by 5e-3..8e-3). The
  patch changes transformers' classes for good, so LXT runs in a process of its own per
  family and method (``--lxt-worker FAMILY METHOD``, the weights handed over in a file).

The section is written between two markers in ``--out``; the rest of the file is left as
``model_coverage.py`` wrote it (and that script keeps this section).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as hf
from model_coverage import (
    _WIDTH,
    HF_FAMILIES,
    TEXT_END,
    TEXT_START,
    TOLERANCE,
    _bias_free,
    _relative,
)
from tqdm import tqdm

import innspect
from innspect.errors import InnspectError
from innspect.text import explain_generation
from innspect.text.result import TokenAttribution
from innspect.text.seq2seq import EncoderDecoderEmbeds, embed, is_encoder_decoder
from innspect.util.files import write_text

START, END = TEXT_START, TEXT_END
METHODS = (
    "gradient",
    "input_t_gradient",
    "integrated_gradients",
    "occlusion",
    "lrp.epsilon",
    "lrp.attn",
    "lrp.cp",
)
PROMPT, NEW, STEPS = 6, 3, 8
_SEQ2SEQ: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "t5": (hf.T5Config, {"vocab_size": 100, "d_model": 32, "d_kv": 16, "d_ff": 64,
                         "num_layers": 2, "num_heads": 2, "decoder_start_token_id": 0,
                         "pad_token_id": 0, "eos_token_id": 1}),
    "bart": (hf.BartConfig, {"vocab_size": 100, "d_model": 32, "encoder_layers": 2,
                             "decoder_layers": 2, "encoder_attention_heads": 2,
                             "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                             "decoder_ffn_dim": 64, "max_position_embeddings": 64,
                             "scale_embedding": True, "pad_token_id": 1, "bos_token_id": 0,
                             "eos_token_id": 3, "decoder_start_token_id": 2,
                             "forced_eos_token_id": None}),
}  # fmt: skip
FAMILIES = (*(n for n, (task, _) in HF_FAMILIES.items() if task == "causal"), *_SEQ2SEQ)
# The families of this table that LXT 2.1's efficient mode patches (lxt/efficient/models/:
# its gemma3 patches Gemma 3's classes, not Gemma's; its bert is an encoder), and the patch
# map of each method. Issue 28 asks LXT's documented agreement (1e-4); these families agree
# to 1e-9..5e-8 (float64), so the check holds them to the table's own 1e-6 (issue 25).
LXT_FAMILIES = ("llama", "qwen2", "qwen3", "gpt2")
LXT_MAPS = {"lrp.attn": "attnLRP", "lrp.cp": "cp_LRP"}
LXT_TOLERANCE = TOLERANCE
# LXT's efficient mode has no stabiliser in linear layers (gradient x input); the check
# reruns explain_generation with this epsilon on the same continuation (the default 1e-6
# moves the rows of these tiny random models by 5e-3..8e-3 from LXT's on LLaMA).
LXT_EPSILON = 1e-12
# (family, method) -> relative L2 distance from LXT, for the section's prose.
_LXT_ROWS: dict[str, torch.Tensor] = {}  # a request's rows (a check run twice asks once)
LXT_DISTANCES: dict[tuple[str, str], float] = {}


def build(family: str) -> torch.nn.Module:
    """The family's tiny configuration with random weights, float64, in eval mode."""
    torch.manual_seed(0)
    if family in _SEQ2SEQ:
        config_class, settings = _SEQ2SEQ[family]
        return hf.AutoModelForSeq2SeqLM.from_config(config_class(**settings)).eval().double()
    config = hf.AutoConfig.for_model(family, **{**_WIDTH, **HF_FAMILIES[family][1]})
    return hf.AutoModelForCausalLM.from_config(config).eval().double()


class StepLogits:
    """Every step's logits as a function of the token embeddings, without innspect.

    ``embeddings()`` is the leaf (1, N, D) whose columns are the matrix's (an
    encoder-decoder's last generated token, read by no step, has no column here: the matrix
    holds a zero for it); ``logits(leaf)`` the (G, V) logits of the steps.
    """

    def __init__(self, model: torch.nn.Module, result: TokenAttribution) -> None:
        self.model, self.result = model, result
        self.seq2seq = is_encoder_decoder(model)
        self.ids = result.sequence_ids
        self.generated = result.generated_ids
        self.prompt = result.prompt_length

    def embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.ids if ids is None else ids
        if self.seq2seq:
            source = self.result.source_length
            return embed(self.model, ids[:, :source], ids[:, source:-1])
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids).detach()

    def logits(self, leaf: torch.Tensor) -> torch.Tensor:
        if self.seq2seq:
            wrapper = EncoderDecoderEmbeds(self.model, self.result.source_length, None)
            return wrapper(leaf)[0]
        out = self.model(inputs_embeds=leaf, use_cache=False).logits[0]
        return out[self.prompt - 1 : self.prompt - 1 + len(self.generated)]

    def scores(self, leaf: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(len(self.generated))
        return self.logits(leaf)[steps, self.generated]

    def columns(self, per_token: torch.Tensor) -> torch.Tensor:
        """(G, N) values in the matrix's (G, width) layout."""
        missing = self.result.matrix.shape[1] - per_token.shape[1]
        return torch.nn.functional.pad(per_token, (0, missing))


def _gradients(reference: StepLogits, leaf_value: torch.Tensor) -> torch.Tensor:
    """(G, N, D): each step's gradient at ``leaf_value``."""
    rows = []
    for k in range(len(reference.generated)):
        leaf = leaf_value.clone().requires_grad_(True)
        reference.scores(leaf)[k].backward()
        rows.append(leaf.grad[0])
    return torch.stack(rows)


def by_hand(
    method: str, model: torch.nn.Module, result: TokenAttribution
) -> tuple[torch.Tensor, torch.Tensor]:
    """The matrix of ``method`` computed without ``explain_generation``, and the scale of
    the terms each entry sums (a gradient through a LayerNorm sums to ~0 per token: GPT-2's
    summed gradient is rounding noise, compared against the size of what it sums)."""
    reference = StepLogits(model, result)
    embedded = reference.embeddings()
    if method in ("gradient", "input_t_gradient"):
        grads = _gradients(reference, embedded)
        factor = embedded if method == "input_t_gradient" else torch.ones_like(embedded)
        terms = grads * factor
        return reference.columns(terms.sum(-1)), reference.columns(terms.abs().sum(-1))
    baseline_ids = torch.full_like(reference.ids, _baseline(model))
    if method == "integrated_gradients":
        baseline = reference.embeddings(baseline_ids)
        total = torch.zeros(len(reference.generated), *embedded.shape[1:], dtype=embedded.dtype)
        for j in range(STEPS):
            total += _gradients(reference, baseline + j / STEPS * (embedded - baseline))
        terms = total / STEPS * (embedded - baseline)
        return reference.columns(terms.sum(-1)), reference.columns(terms.abs().sum(-1))
    if method == "occlusion":
        with torch.no_grad():
            clean = reference.scores(embedded)
            drops = []
            for i in range(embedded.shape[1]):
                ablated = reference.ids.clone()
                ablated[0, i] = baseline_ids[0, i]
                drops.append(clean - reference.scores(reference.embeddings(ablated)))
        matrix = reference.columns(torch.stack(drops, dim=1))
        return matrix, matrix.abs()
    raise ValueError(method)


def _baseline(model: torch.nn.Module) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return pad if isinstance(pad, int) and 0 <= pad < model.config.vocab_size else 0


class _EmbeddingsIn(torch.nn.Module):
    """A decoder-only model on ``inputs_embeds``: the last position's logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=embeds, use_cache=False).logits[:, -1]


def alone(method: str, model: torch.nn.Module, result: TokenAttribution, k: int) -> torch.Tensor:
    """Row ``k`` by a separate analysis of step ``k`` alone: its last logit, the sequence cut
    after the token it is predicted from."""
    reference = StepLogits(model, result)
    embedded = reference.embeddings()
    if reference.seq2seq:
        width = result.source_length + 1 + k
        wrapped = EncoderDecoderEmbeds(model, result.source_length, None)
        output: Callable[[Any], torch.Tensor] = lambda out: out[:, -1]  # noqa: E731
    else:
        width = reference.prompt + k
        wrapped, output = _EmbeddingsIn(model), lambda out: out
    analyzer = innspect.create_analyzer(
        method, wrapped, attribute_sum_axis=-1, output=output, **result_options(method)
    )
    token = int(reference.generated[k])
    return analyzer.analyze(embedded[:, :width], target=token)[0]


def lxt_rows(method: str, model: torch.nn.Module, result: TokenAttribution) -> torch.Tensor:
    """LXT 2.1's (G, P + G) relevance of every step of ``result``, computed in a process of its
    own (``--lxt-worker``) on ``build(family)`` loaded with ``model``'s weights."""
    family = model.config.model_type
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(Path(__file__).parent)]),
    }
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "weights.pt"
        torch.save(model.state_dict(), weights)
        request = {
            "weights": str(weights),
            "sequence": result.sequence_ids[0].tolist(),
            "prompt": result.prompt_length,
            "generated": result.generated_ids.tolist(),
        }
        key = hashlib.sha256(
            (family + method + json.dumps({**request, "weights": None})).encode()
            + weights.read_bytes()
        ).hexdigest()
        if key in _LXT_ROWS:
            return _LXT_ROWS[key].clone()
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--lxt-worker", family, method],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the LXT worker failed: {done.stderr.strip()[-800:]}")
    rows = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]), dtype=torch.float64)
    _LXT_ROWS[key] = StepLogits(model, result).columns(rows)
    return _LXT_ROWS[key].clone()


def lxt_worker(family: str, method: str) -> None:
    """Print LXT's rows (JSON) for the request on stdin; this process is patched for good."""
    request = json.load(sys.stdin)
    patches = importlib.import_module(f"lxt.efficient.models.{family}")
    model = build(family)
    model.load_state_dict(torch.load(request["weights"]))
    # monkey_patch(module, patch_map) is this loop; it only warns when a patch fails.
    for target, apply in getattr(patches, LXT_MAPS[method]).items():
        if not apply(target):
            raise SystemExit(f"LXT could not patch {target}")
    sequence, prompt = torch.tensor([request["sequence"]]), request["prompt"]
    with torch.no_grad():
        embedded = model.get_input_embeddings()(sequence)
    rows = []
    for k, token in enumerate(request["generated"]):
        leaf = embedded.clone().requires_grad_(True)
        logits = model(inputs_embeds=leaf, use_cache=False).logits
        logits[0, prompt + k - 1, token].backward()
        rows.append((leaf * leaf.grad).sum(-1)[0].tolist())
    print(json.dumps(rows))


def lxt_check(method: str, model: torch.nn.Module, result: TokenAttribution) -> tuple[float, str]:
    """(the matrix's relative L2 distance from LXT's rows, a failure message or "")."""
    reference = lxt_rows(method, model, result)
    per_row = [_relative(result.matrix[k], reference[k]) for k in range(len(reference))]
    distance = _relative(result.matrix, reference)
    LXT_DISTANCES[(model.config.model_type, method)] = distance
    if distance <= LXT_TOLERANCE:
        return distance, ""
    rows = ", ".join(f"{d:.2g}" for d in per_row)
    return distance, f"rel. L2 {distance:.2g} from LXT 2.1 (rows: {rows})"


def result_options(method: str) -> dict[str, Any]:
    return {"steps": STEPS} if method == "integrated_gradients" else {}


def cell(family: str, method: str, model: torch.nn.Module, prompt: torch.Tensor) -> tuple:
    """("ok CHECK 0.12 s" | "wrong CHECK" | "refused" | "error", note or "")."""
    options = result_options(method)
    started = time.perf_counter()
    try:
        result = explain_generation(
            model, prompt, max_new_tokens=NEW, method=method, stop_at_eos=False, **options
        )
    except InnspectError as error:
        return "refused", f"{family} {method}: {str(error).splitlines()[0]}"
    except Exception as error:  # noqa: BLE001 - the table records it
        return "error", f"{family} {method}: {type(error).__name__}: {error}"
    seconds = time.perf_counter() - started
    try:
        what, failure = check(method, model, prompt, result)
    except Exception as error:  # noqa: BLE001 - a check that cannot run is reported
        return "error", f"{family} {method} check: {type(error).__name__}: {error}"
    if failure:
        return f"**wrong** {what}", f"{family} {method}: {failure}"
    return f"ok {what} {seconds:.2f} s", ""


def check(
    method: str, model: torch.nn.Module, prompt: torch.Tensor, result: TokenAttribution
) -> tuple[str, str]:
    """(the checks' short names, a failure message or ""): on a failure of an LXT family,
    the names of the checks that failed, in parentheses."""
    what, failure = own_check(method, model, prompt, result)
    if method not in LXT_MAPS or model.config.model_type not in LXT_FAMILIES:
        return what, failure
    exact = explain_generation(
        model, prompt, generated_ids=result.generated_ids, method=method, epsilon=LXT_EPSILON
    )
    _, lxt_failure = lxt_check(method, model, exact)
    failed = [name for name, message in (("= LXT", lxt_failure), (what, failure)) if message]
    if failed:
        return "(" + ", ".join(failed) + ")", "; ".join(m for m in (lxt_failure, failure) if m)
    return f"= LXT, {what}", ""


def own_check(
    method: str, model: torch.nn.Module, prompt: torch.Tensor, result: TokenAttribution
) -> tuple[str, str]:
    """The check computed without LXT: (its short name, a failure message or "")."""
    matrix = result.matrix
    if method == "lrp.cp":
        free = _bias_free(model)
        conserved = explain_generation(
            free, prompt, generated_ids=result.generated_ids, method=method, epsilon=1e-100
        )
        gaps = (conserved.matrix.sum(1) - conserved.scores).abs()
        gap = float((gaps / conserved.scores.abs().clamp_min(1e-300)).max())
        message = f"bias-free rows sum to {conserved.matrix.sum(1).tolist()}, logits " + str(
            conserved.scores.tolist()
        )
        return "conserves", "" if gap <= TOLERANCE else message
    if method in ("lrp.epsilon", "lrp.attn"):
        worst = 0.0
        for k in (0, len(result.generated_ids) - 1):
            row = alone(method, model, result, k)
            worst = max(worst, _relative(matrix[k, : row.shape[0]], row))
        return "= alone", "" if worst <= TOLERANCE else f"rel. L2 {worst:.2g} from step alone"
    expected, scale = by_hand(method, model, result)
    error = float((matrix - expected).norm() / max(float(expected.norm()), float(scale.norm())))
    what = "= autograd" if method in ("gradient", "input_t_gradient") else "= by hand"
    return what, "" if error <= TOLERANCE else f"rel. L2 {error:.2g} from the matrix by hand"


def section(families: list[str]) -> str:
    rows, notes = [], []
    for family in tqdm(families, desc="families", unit="family"):
        model = build(family)
        torch.manual_seed(1)
        prompt = torch.randint(4, model.config.vocab_size, (1, PROMPT))
        cells = []
        for method in METHODS:
            text, note = cell(family, method, model, prompt)
            cells.append(text)
            if note:
                notes.append(f"- {note}")
        kind = "encoder-decoder" if family in _SEQ2SEQ else "decoder"
        rows.append(f"| {family} | {kind} | " + " | ".join(cells) + " |")
        tqdm.write(rows[-1])
    header = "| family | kind | " + " | ".join(METHODS) + " |"
    rule = "| " + " | ".join("---" for _ in range(len(METHODS) + 2)) + " |"
    lines = [
        START,
        "## Explaining generated text (`innspect.text.explain_generation`)",
        "",
        "Made by `python benchmarks/text_coverage.py` (`make coverage` runs it): "
        f"transformers {hf.__version__}, tiny random float64 configurations (2 layers, width "
        f"32), a prompt of {PROMPT} token ids, {NEW} tokens generated greedily, every "
        "generated token explained against the prompt and the earlier tokens. Each cell "
        "names its check: `= autograd` (every row equals autograd's gradient, or gradient x "
        "embedding, at the token embeddings), `= by hand` (integrated gradients with "
        f"{STEPS} points, token ablation: every row recomputed without innspect), `= alone` "
        "(the first and last rows, from the batched walks, equal a separate analysis of "
        "that step alone), `conserves` (lrp.cp on a copy with biases and position tables "
        f"zeroed: every row sums to its logit); tolerance {TOLERANCE:g}. On the families "
        f"LXT 2.1's efficient mode patches ({', '.join(LXT_FAMILIES)}), the lrp.attn and "
        "lrp.cp cells also check `= LXT`: every row equals LXT's relevance of that step "
        "(gradient x input at the token embeddings after `lxt.efficient.monkey_patch` with "
        "its `attnLRP` / `cp_LRP` map, one backward per step, in a process of its own), "
        f"relative L2 <= {LXT_TOLERANCE:g} (tighter than the 1e-4 of LXT's documented "
        "agreement); LXT's efficient mode has no stabiliser in linear layers, so innspect's "
        f"matrix is recomputed for this check with epsilon {LXT_EPSILON:g} on the same "
        "continuation (the default 1e-6 moves LLaMA's rows by 5e-3..8e-3 from LXT's). "
        f"{_lxt_distances()} A cell "
        "that fails a check reads **wrong** with the failed checks in parentheses, the "
        "distance in the notes. Agreement with Captum: tests/test_text_peers.py.",
        "",
        header,
        rule,
        *rows,
        "",
        *(notes or ["Every cell passed its check."]),
        END,
    ]
    return "\n".join(lines) + "\n"


def _lxt_distances() -> str:
    if not LXT_DISTANCES:
        return ""
    parts = ", ".join(f"{f} {m} {d:.1g}" for (f, m), d in sorted(LXT_DISTANCES.items()))
    return f"Distances from LXT in this run: {parts}."


def insert(text: str, block: str) -> str:
    """``text`` with its text-generation section replaced by ``block`` (or appended)."""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        return before + block + ("\n" + after if after else "")
    return text.rstrip("\n") + "\n\n" + block


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    parser.add_argument(
        "--lxt-worker",
        nargs=2,
        metavar=("FAMILY", "METHOD"),
        help="internal: print LXT's rows for the request on stdin (patches this process)",
    )
    args = parser.parse_args(argv)
    if args.lxt_worker:
        lxt_worker(*args.lxt_worker)
        return
    block = section(args.families)
    existing = args.out.read_text() if args.out.exists() else ""
    write_text(args.out, insert(existing, block))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
