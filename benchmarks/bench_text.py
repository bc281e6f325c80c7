"""The `--only text` group of benchmarks/run.py (issue 28, "Speed").

Explaining every generated token of a LLaMA-architecture model (random weights, 4 layers,
width 512, 8 heads, vocabulary 32000, float32, SDPA attention) continuing a 64-token prompt by
32 greedy tokens, side by side in one run:

- innspect ``input_t_gradient`` over all 32 steps (``innspect.text.GenerationExplainer``),
  both ways: ``batching="signals"`` (the default for the gradient methods: one forward, the
  steps' signals in batched backward passes of 16) and ``batching="rows"`` (innspect's
  analyzer on the sequence repeated as a batch, one reverse walk per 16 steps), against Captum 0.9
  ``LLMGradientAttribution(LayerGradientXActivation)`` (a forward and a backward per step over
  the growing sequence), both explaining each step's log-probability; their prompt columns
  are checked equal before timing;
- innspect ``lrp.attn`` over all 32 steps (rows) against ``input_t_gradient``;
- the floor: one forward over the sequence, then one backward per step from that forward's
  graph (``retain_graph``): what any method that starts one reverse signal per step pays.

Every row is timed paired with the floor (run.py's ``measure_paired``). The captures
(torch.export of the model, per sequence length) happen in the warm-up and are reported as
the first call. ``--text-quick`` runs the same on a tiny model (a check that it works).
"""

from __future__ import annotations

from types import ModuleType

import torch

from innspect.text import GenerationExplainer, explain_generation

FULL = {"hidden": 512, "layers": 4, "heads": 8, "vocab": 32000, "prompt": 64, "new": 32}
QUICK = {"hidden": 32, "layers": 2, "heads": 4, "vocab": 100, "prompt": 8, "new": 4}


def build(size: dict[str, int]) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model, prompt ids (1, P), greedy continuation (G,)) with random weights."""
    import transformers as hf

    torch.manual_seed(0)
    config = hf.LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["hidden"] * 11 // 4,
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"],
        max_position_embeddings=2 * (size["prompt"] + size["new"]),
        attn_implementation="sdpa",
    )
    model = hf.LlamaForCausalLM(config).eval()
    prompt = torch.randint(0, size["vocab"], (1, size["prompt"]))
    from innspect.text import greedy_continuation

    generated = greedy_continuation(model, prompt, size["new"], stop_at_eos=False)
    return model, prompt, generated


def floor(model: torch.nn.Module, sequence: torch.Tensor, prompt: int, generated: torch.Tensor):
    """One forward over the sequence, then one backward per step (each step's log-prob)."""

    def run() -> None:
        embedded = model.get_input_embeddings()(sequence).detach().requires_grad_(True)
        logits = model(inputs_embeds=embedded, use_cache=False).logits[0]
        steps = prompt - 1 + torch.arange(generated.numel())
        values = torch.log_softmax(logits[steps], -1)[torch.arange(generated.numel()), generated]
        for k in range(generated.numel()):
            (grad,) = torch.autograd.grad(values[k], embedded, retain_graph=True)
            (grad * embedded).sum(-1)

    return run


class _Tokenizer:
    """What Captum's LLMGradientAttribution reads of a tokenizer, for ids given directly."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def encode(self, text: str, return_tensors: str | None = None, **_: object) -> torch.Tensor:
        return self.ids

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [str(i) for i in ids]

    def decode(self, ids: list[int] | torch.Tensor, **_: object) -> str:
        return " ".join(str(int(i)) for i in ids)

    def __call__(self, text: str, **_: object) -> dict[str, list]:
        """Ids and character offsets of ``decode``'s text (Captum's pretty tokens)."""
        ids, offsets, start = [], [], 0
        for word in text.split(" "):
            ids.append(int(word))
            offsets.append((start, start + len(word)))
            start += len(word) + 1
        return {"input_ids": ids, "offset_mapping": offsets}


def captum_run(model: torch.nn.Module, prompt: torch.Tensor, generated: torch.Tensor):
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    tokenizer = _Tokenizer(prompt)
    method = LLMGradientAttribution(
        LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer
    )

    def run() -> torch.Tensor:
        inp = TextTokenInput("prompt", tokenizer)
        return method.attribute(inp, target=generated).token_attr

    return run


def section(bench: ModuleType, repeats: int, quick: bool = False) -> str:
    size = QUICK if quick else FULL
    model, prompt, generated = build(size)
    sequence = torch.cat([prompt, generated[None]], 1)
    explainer = GenerationExplainer(model)
    common = {"generated_ids": generated, "batch_size": 16}

    def ours(method: str, **options: object):
        return lambda: explainer.explain(prompt, method=method, **common, **options)

    # Equal values first: innspect's prompt columns against Captum's rows.
    captum = captum_run(model, prompt, generated)
    reference = captum().double()
    # (explain_generation: its own capture, so the rows' first calls include theirs)
    checked = explain_generation(
        model, prompt, method="input_t_gradient", score="log_prob", **common
    )
    matrix = checked.matrix[:, : prompt.shape[1]].double()
    error = float((matrix - reference).norm() / reference.norm())
    if error > 1e-4:
        raise AssertionError(f"innspect and Captum differ: relative L2 {error:.2e}")
    subjects = [
        bench.Subject(
            "innspect input_t_gradient, all steps (batching='signals', default)",
            ours("input_t_gradient"),
        ),
        bench.Subject(
            "innspect input_t_gradient, all steps (batching='rows': the analyzer)",
            ours("input_t_gradient", batching="rows"),
        ),
        bench.Subject("innspect lrp.attn, all steps (rows)", ours("lrp.attn")),
        bench.Subject("Captum LLMGradientAttribution (gradient x input)", captum, peer=True),
    ]
    print("text generation:", flush=True)
    floor_row = bench.measure_paired(
        subjects, floor(model, sequence, prompt.shape[1], generated), repeats
    )
    rows = {subject.label: subject.row() for subject in subjects}
    ig, ig_rows, attn, peer = (rows[s.label] for s in subjects)
    lines = [
        f"## Explaining a generation (LLaMA architecture, random weights, {size['layers']} "
        f"layers, width {size['hidden']}, vocabulary {size['vocab']}, prompt {size['prompt']} "
        f"tokens, {size['new']} generated, float32)\n",
        "Seconds for all steps (median of paired runs) and the ratio to the floor: one forward "
        f"over the sequence and one backward per step ({floor_row.seconds:.3f} s here). First "
        "call: the capture (torch.export) included. innspect and Captum explain each step's "
        f"log-probability; their prompt columns agree to a relative L2 of {error:.1e}.\n",
        "| row | seconds | x floor | first call (s) |",
        "|---|---:|---:|---:|",
    ]
    for row in (ig, ig_rows, attn, peer):
        first = "" if row.first_call is None else f"{row.first_call:.2f}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(f"| {row.name} | {row.seconds:.3f} | {ratio} | {first} |")
    if peer.ratio is not None and ig.ratio is not None:
        lines.append(
            f"\nTargets (issue 28): innspect input_t_gradient {peer.seconds / ig.seconds:.2f}x "
            f"faster than Captum (target >= 2x); lrp.attn {attn.seconds / ig.seconds:.2f}x "
            f"input_t_gradient with signals, {attn.seconds / ig_rows.seconds:.2f}x with rows "
            "(target <= 1.2x)."
        )
    return "\n".join(lines) + "\n"
