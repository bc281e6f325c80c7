"""Explaining a generation: each generated token's score against every earlier token.

A decoder-only language model predicts token ``P + k`` (generated token ``k``) from position
``P + k - 1`` of the sequence ``prompt + continuation``; causal attention keeps later
positions out of that logit. So one sequence serves every step: the sequence is repeated as
a batch, row ``j`` starting the reverse walk at (position ``P + k_j - 1``, the token explained
at step ``k_j``), and each row's attribution at the token embeddings (summed over the
embedding axis) is row ``k_j`` of the matrix. Token ablation (``occlusion``) replaces one
token at a time by a baseline token; one forward per replaced token gives the change of
every step's score at once (Captum's ``FeatureAblation`` in ``LLMAttribution`` runs one per
token and step). An encoder-decoder model (T5, BART) is run on ``source + start token +
continuation`` the same way, its decoder's steps explained against the source's and the
decoder's tokens (``innspect.text.seq2seq``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

from innspect.analyzers.api import Analyzer
from innspect.analyzers.registry import create_analyzer
from innspect.errors import InputError, NonFiniteRelevanceError, OptionError
from innspect.graph.views import eval_view
from innspect.text import seq2seq
from innspect.text.loading import is_text_classifier
from innspect.text.result import TokenAttribution

METHODS = (
    "gradient",
    "input_t_gradient",
    "integrated_gradients",
    "lrp.epsilon",
    "lrp.attn",
    "lrp.cp",
    "occlusion",
)
SCORES = ("logit", "log_prob")
BASELINE_SPANS = ("sequence", "prompt")
BATCHINGS = ("auto", "rows", "signals")
# Methods that are the plain gradient at the embeddings: autograd's batched backward runs them.
_SIGNAL_METHODS = ("gradient", "input_t_gradient")
# Relevance methods start the walk from y * dt/dy, which is the explained value only when it
# is linear in the logits: a log-probability has no relevance start.
_RELEVANCE = ("lrp.epsilon", "lrp.attn", "lrp.cp")
# A causal model gives exactly zero past the explained position; more than this (relative to
# the row's largest value) means the model looks ahead.
_LOOKAHEAD_TOLERANCE = 1e-6
# Analyzers a GenerationExplainer keeps (the oldest goes first).
_ANALYZERS_KEPT = 8
# Config fields that give a model's context length, by family (LLaMA, GPT-2, ...).
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def explain_generation(
    model: nn.Module,
    input_ids: Any,
    *,
    max_new_tokens: int | None = None,
    generated_ids: Any = None,
    method: str = "lrp.attn",
    target: Any = None,
    contrast: Any = None,
    attention_mask: Any = None,
    skip_tokens: Sequence[int | str] = (),
    tokenizer: Any = None,
    batch_size: int = 16,
    score: str = "logit",
    baseline_token: int | None = None,
    baseline_span: str = "sequence",
    stop_at_eos: bool = True,
    batching: str = "auto",
    **options: Any,
) -> TokenAttribution:
    """Explain every generated token of a language model at its token embeddings.

    Parameters
    ----------
    model
        A Hugging Face causal language model (``...ForCausalLM``: LLaMA, GPT-2, ...) or an
        encoder-decoder model (``...ForConditionalGeneration``: T5, BART), whose decoder
        starts from ``config.decoder_start_token_id``.
    input_ids
        The prompt's token ids, shape ``(P,)`` or ``(1, P)``; an encoder-decoder model's
        source (the encoder's input).
    max_new_tokens
        Generate this many tokens greedily (fewer when ``stop_at_eos`` and the model ends).
    generated_ids
        Or the continuation to explain, shape ``(G,)`` (teacher forcing: nothing generated).
    method
        One of ``METHODS``: the gradient, gradient x input, integrated gradients (at the
        embeddings), LRP-epsilon, AttnLRP (Achtibat et al. 2024), CP-LRP (Ali et al. 2022)
        or ``occlusion`` (each token replaced by ``baseline_token``, one at a time).
    target
        What step ``k`` explains: None (the generated token's score), one token id for every
        step, or ``G`` token ids (one per step).
    contrast
        Explain "target rather than this token": one token id or ``G`` of them; the score
        becomes the difference of the two logits.
    attention_mask
        The prompt's mask, shape of ``input_ids`` (ones for the generated tokens are added).
    skip_tokens
        Token ids (or strings, with a tokenizer) hidden from the displays (chat templates);
        the model still reads them and the matrix keeps their columns.
    tokenizer
        A Hugging Face tokenizer: gives ``tokens`` and is checked against the model.
    batch_size
        Rows per reverse walk (steps explained together), or sequences per forward for
        occlusion.
    score
        ``"logit"`` (default) or ``"log_prob"`` (the log-softmax, Captum's
        ``LLMGradientAttribution`` target; not for the LRP methods).
    baseline_token
        The token that replaces a token (occlusion) or whose embedding starts the path
        (integrated gradients); default the model's pad token, else 0.
    baseline_span
        Integrated gradients: ``"sequence"`` (every token starts at the baseline) or
        ``"prompt"`` (only the prompt's; Captum's ``LLMGradientAttribution``, which leaves
        the earlier generated tokens at their embeddings, so their columns are zero).
    stop_at_eos
        Stop generating after the model's end-of-sequence token.
    batching
        How the steps share the work. ``"rows"``: innspect's analyzer on the sequence repeated
        as a batch, one row per step (every method but occlusion). ``"signals"``: one forward
        of the sequence, then every step's start signal in one batched backward (autograd's
        ``is_grads_batched``); ``gradient`` and ``input_t_gradient`` only. ``"auto"``
        (default): ``"signals"`` where it applies, else ``"rows"``.
    **options
        The method's options (``epsilon=``, ``steps=``; ``integration=`` is integrated
        gradients' ``method``: "riemann_left", "gausslegendre"...).

    Returns
    -------
    TokenAttribution
        ``matrix[k, i]``: the contribution of token ``i`` to step ``k``'s score; zero for
        ``i >= P + k``. Encoder-decoder: the columns are the ``S`` source tokens, the
        decoder's start token, the continuation (``P = S + 1``; ``source_length`` is ``S``).
    """
    # GenerationExplainer passes its analyzers: captures reused between calls.
    cache = options.pop("_analyzers", None)
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if score not in SCORES:
        raise OptionError(f"score must be one of {SCORES}, got {score!r}")
    if score == "log_prob" and method in _RELEVANCE:
        raise OptionError(
            f"{method} explains logits (relevance starts from the explained value, which a "
            "log-probability is not); use score='logit' or a gradient method"
        )
    if batching not in BATCHINGS:
        raise OptionError(f"batching must be one of {BATCHINGS}, got {batching!r}")
    if batching == "auto":
        batching = "signals" if method in _SIGNAL_METHODS and not options else "rows"
    elif batching == "signals" and method not in _SIGNAL_METHODS:
        raise OptionError(
            f"batching='signals' runs {' and '.join(_SIGNAL_METHODS)} (plain gradients); "
            f"{method} walks innspect's rules: use batching='rows'"
        )
    if baseline_span not in BASELINE_SPANS:
        raise OptionError(f"baseline_span must be one of {BASELINE_SPANS}, got {baseline_span!r}")
    batch_size = _positive_int("batch_size", batch_size)
    if is_text_classifier(model):
        raise InputError(
            f"{type(model).__name__} is a text classifier: it writes no text; explain its "
            "classes with innspect.text.explain_classification"
        )
    embedding, embedding_name = _embedding(model)
    vocab = embedding.num_embeddings
    device = embedding.weight.device
    prompt = _token_ids("input_ids", input_ids, vocab, device)
    if tokenizer is not None:
        _check_tokenizer(tokenizer, vocab)
    context = _context_length(model)
    mask = _prompt_mask(attention_mask, prompt)
    encoder_decoder = seq2seq.is_encoder_decoder(model)
    start = seq2seq.start_token(model, vocab) if encoder_decoder else None
    if generated_ids is not None:
        if max_new_tokens is not None:
            raise InputError("give max_new_tokens (to generate) or generated_ids, not both")
        generated = _token_ids("generated_ids", generated_ids, vocab, device)[0]
        _check_context(prompt.shape[1], generated.numel(), context, encoder_decoder)
    else:
        if max_new_tokens is None:
            raise InputError("give max_new_tokens (how many tokens to generate) or generated_ids")
        count = _positive_int("max_new_tokens", max_new_tokens)
        _check_context(prompt.shape[1], count, context, encoder_decoder)
        if start is not None:
            eos = _eos_ids(model) if stop_at_eos else set()
            generated = seq2seq.greedy(eval_view(model), prompt, start, count, mask, eos)
        else:
            generated = greedy_continuation(model, prompt, count, mask, stop_at_eos=stop_at_eos)
    if start is None:
        # Decoder-only: the model reads the whole sequence; step k at position P + k - 1.
        sequence = torch.cat([prompt, generated[None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(generated)[None]], 1)
        steps = _Steps(prompt.shape[1], generated, target, contrast, vocab, device, score)
        source_length, subject = 0, _DecoderOnly(model, mask)
    else:
        # Encoder-decoder: source, start token, continuation; the model reads all but the
        # last token (the decoder's input is the start token and the continuation's G - 1
        # first), and decoder position k (column S + k) predicts step k.
        sequence = torch.cat([prompt, prompt.new_tensor([[start]]), generated[None]], dim=1)
        steps = _Steps(1, generated, target, contrast, vocab, device, score)
        source_length = prompt.shape[1]
        subject = _EncoderDecoder(model, source_length, mask)
    # Step k reads the columns before this one plus k.
    reads = sequence.shape[1] - steps.count
    baseline = _baseline_token(model, baseline_token, vocab)
    if method == "occlusion":
        if options:
            raise OptionError(f"occlusion takes no options, got {', '.join(options)}")
        matrix, scores = _occlusion(subject, sequence, steps, baseline, batch_size)
    elif batching == "signals":
        if options:
            raise OptionError(f"batching='signals' takes no options, got {', '.join(options)}")
        matrix, scores = _signals(subject, method, embedding, sequence, steps, batch_size)
    else:
        matrix, scores = _walks(
            subject,
            method,
            embedding,
            embedding_name,
            sequence,
            steps,
            batch_size,
            options,
            baseline,
            prompt.shape[1] if baseline_span == "prompt" else None,
            cache,
        )
    if matrix.shape[1] < sequence.shape[1]:  # the last token, read by no step
        matrix = torch.cat([matrix, matrix.new_zeros(steps.count, 1)], dim=1)
    _cut_future(matrix, reads, method)
    hidden = _hidden(sequence[0], skip_tokens, tokenizer)
    tokens = None if tokenizer is None else token_texts(tokenizer, sequence[0].tolist())
    return TokenAttribution(
        sequence_ids=sequence.cpu(),
        generated_ids=generated.cpu(),
        matrix=matrix.cpu(),
        scores=scores.cpu(),
        method=method,
        score=score,
        targets=steps.a.cpu(),
        contrasts=None if steps.b is None else steps.b.cpu(),
        tokens=tokens,
        hidden=hidden.cpu(),
        source_length=source_length,
    )


class GenerationExplainer:
    """Explains generations of one model, keeping each method's analyzer for later calls.

    ``explain_generation`` captures the model's graph on every call (torch.export of a
    Hugging Face model: seconds); the capture is specialised to the sequence's length, so
    an explainer reuses it for later calls with the same length, method and options
    (another target or contrast, the same continuation explained again). It holds the model
    while it lives.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._analyzers: dict[Hashable, Analyzer] = {}

    def explain(self, input_ids: Any, **kwargs: Any) -> TokenAttribution:
        """``explain_generation(model, input_ids, **kwargs)`` with the kept analyzers."""
        return explain_generation(self.model, input_ids, _analyzers=self._analyzers, **kwargs)


def greedy_continuation(
    model: nn.Module,
    prompt: torch.Tensor,
    count: int,
    attention_mask: torch.Tensor | None = None,
    *,
    stop_at_eos: bool = True,
) -> torch.Tensor:
    """``count`` tokens chosen greedily (the argmax of each step's logits), shape ``(G,)``.

    Each step runs the whole sequence (no key/value cache): the logits are those of the
    forward the explanation records, so the explained token is the argmax there too. An eval
    view runs the model, whose ``training`` flags stay as they are.
    """
    view = eval_view(model)
    eos = _eos_ids(model) if stop_at_eos else set()
    sequence, mask = prompt, attention_mask
    chosen: list[int] = []
    with torch.no_grad():
        for _ in range(count):
            logits = _logits(view, sequence, mask)
            token = int(logits[0, -1].argmax())
            chosen.append(token)
            sequence = torch.cat([sequence, sequence.new_tensor([[token]])], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            if token in eos:
                break
    return prompt.new_tensor(chosen)


class _Steps:
    """What each step explains: token ``a[k]`` (minus token ``b[k]``) at position
    ``P + k - 1``, as a logit or a log-probability."""

    def __init__(
        self,
        prompt_length: int,
        generated: torch.Tensor,
        target: Any,
        contrast: Any,
        vocab: int,
        device: torch.device,
        score: str,
    ) -> None:
        count = generated.numel()
        self.count = count
        self.positions = prompt_length - 1 + torch.arange(count, device=device)
        self.a = generated.clone() if target is None else _per_step("target", target, count, vocab)
        self.a = self.a.to(device)
        self.b = None if contrast is None else _per_step("contrast", contrast, count, vocab)
        if self.b is not None:
            self.b = self.b.to(device)
        self.log_prob = score == "log_prob"

    def values(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Row ``r``'s score of step ``steps[r]`` from logits ``(R, T, V)`` (differentiable)."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        y = logits[rows, self.positions[steps]]
        if self.log_prob:
            y = torch.log_softmax(y, dim=-1)
        value = y[rows, self.a[steps]]
        if self.b is not None:
            value = value - y[rows, self.b[steps]]
        return value

    def every_step(self, logits: torch.Tensor) -> torch.Tensor:
        """Every step's score from logits ``(R, T, V)`` of R sequences: shape ``(R, G)``."""
        y = logits[:, self.positions]
        if self.log_prob:
            y = torch.log_softmax(y, dim=-1)
        index = self.a.expand(y.shape[0], -1)[..., None]
        value = y.gather(-1, index)[..., 0]
        if self.b is not None:
            value = value - y.gather(-1, self.b.expand(y.shape[0], -1)[..., None])[..., 0]
        return value

    def target(self, steps: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The ``target=`` callable of a batch whose row ``r`` explains step ``steps[r]``."""
        return lambda logits: self.values(logits, steps)


class _DecoderOnly:
    """How a causal language model is run on the sequence: token ids in, every position's
    logits out; attributed at its embedding's output (``attribute_to``)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None) -> None:
        self.model, self.mask, self.view = model, mask, eval_view(model)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(R, T, V)`` of sequences ``(R, L)``."""
        return _logits(
            self.view, ids, None if self.mask is None else self.mask.expand(len(ids), -1)
        )

    def embedded(self, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return embedding(ids).detach()

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"inputs_embeds": embedded, "use_cache": False}
        if self.mask is not None:
            kwargs["attention_mask"] = self.mask
        output = self.view(**kwargs)
        return output.logits if hasattr(output, "logits") else output

    def analyzed(self, embedding_name: str) -> tuple[nn.Module, str | None, Hashable]:
        """The module an analyzer explains, its ``attribute_to`` and a cache key part."""
        return self.model, embedding_name, ("decoder", self.mask is None)

    def inputs(self, embedding: nn.Embedding, ids: torch.Tensor, rows: int) -> Any:
        inputs = {"input_ids": ids.expand(rows, -1)}
        if self.mask is not None:
            inputs["attention_mask"] = self.mask.expand(rows, -1)
        return inputs


class _EncoderDecoder(_DecoderOnly):
    """How an encoder-decoder model is run on ``source + start + continuation`` (``(R, L)``):
    the first ``S`` ids are the encoder's, the next ``L - S - 1`` the decoder's input; the
    leaf is both embeddings (``seq2seq.EncoderDecoderEmbeds``), one column per id read."""

    def __init__(self, model: nn.Module, source_length: int, mask: torch.Tensor | None) -> None:
        super().__init__(model, mask)
        self.source_length = source_length
        self.embeds = seq2seq.EncoderDecoderEmbeds(model, source_length, mask)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        source, decoder = ids[:, : self.source_length], ids[:, self.source_length : -1]
        return seq2seq.logits(self.view, source, decoder, self.mask)

    def embedded(self, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return seq2seq.embed(
            self.model, ids[:, : self.source_length], ids[:, self.source_length : -1]
        )

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        return eval_view(self.embeds)(embedded)

    def analyzed(self, embedding_name: str) -> tuple[nn.Module, str | None, Hashable]:
        mask = None if self.mask is None else tuple(self.mask[0].tolist())
        return self.embeds, None, ("encoder-decoder", self.source_length, mask)

    def inputs(self, embedding: nn.Embedding, ids: torch.Tensor, rows: int) -> Any:
        return self.embedded(embedding, ids).expand(rows, -1, -1)


def _walks(
    subject: _DecoderOnly,
    method: str,
    embedding: nn.Embedding,
    embedding_name: str,
    sequence: torch.Tensor,
    steps: _Steps,
    batch_size: int,
    options: dict[str, Any],
    baseline: int,
    baseline_span: int | None,
    cache: dict[Hashable, Analyzer] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse-walk methods: batches of rows of the same sequence, one step each.

    ``baseline_span``: integrated gradients start from the baseline token at the first this
    many tokens (None: every token)."""

    def reference() -> torch.Tensor:
        reference_ids = sequence.clone()
        reference_ids[:, : sequence.shape[1] if baseline_span is None else baseline_span] = baseline
        return subject.embedded(embedding, reference_ids)

    options = walk_options(
        method, options, reference, "over a generation takes baseline_token= and baseline_span="
    )
    module, attribute_to, part = subject.analyzed(embedding_name)
    analyzer = _analyzer(module, method, attribute_to, options, sequence.shape[1], part, cache)
    rows = min(batch_size, steps.count)
    matrix: torch.Tensor | None = None
    scores = torch.zeros(steps.count, dtype=embedding.weight.dtype)
    for start in range(0, steps.count, rows):
        chosen = torch.arange(start, min(start + rows, steps.count))
        # The last batch repeats its last step up to the batch's size: one input shape for
        # every walk, so the graph captured for the first serves them all.
        padded = torch.cat([chosen, chosen[-1:].repeat(rows - chosen.numel())])
        inputs = subject.inputs(embedding, sequence, rows)
        explanation = analyzer.explain(inputs, target=steps.target(padded.to(sequence.device)))
        values = torch.as_tensor(explanation.attribution).detach()[: chosen.numel()]
        if matrix is None:
            matrix = torch.zeros(steps.count, values.shape[1], dtype=embedding.weight.dtype)
        matrix[chosen] = values.to(matrix.dtype).cpu()
        scores[chosen] = explanation.scores.detach()[: chosen.numel()].to(scores.dtype).cpu()
    assert matrix is not None  # at least one step
    return matrix, scores


def walk_options(
    method: str,
    options: dict[str, Any],
    reference: Callable[[], torch.Tensor],
    instead: str,
) -> dict[str, Any]:
    """The analyzer's options for the token walks: integrated gradients' ``integration=``
    becomes its ``method=`` and its reference is ``reference()`` (the baseline tokens'
    embeddings); ``reference_inputs`` is refused (``instead`` says what to give)."""
    options = dict(options)
    if method == "integrated_gradients":
        if "integration" in options:
            options["method"] = options.pop("integration")
        if "reference_inputs" in options:
            raise OptionError(f"integrated_gradients {instead}, not reference_inputs")
        options["reference_inputs"] = reference()
    elif "integration" in options:
        raise OptionError("integration= is an option of integrated_gradients only")
    return options


def _signals(
    subject: _DecoderOnly,
    method: str,
    embedding: nn.Embedding,
    sequence: torch.Tensor,
    steps: _Steps,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient methods at the floor: one forward of the sequence (every step's score
    comes out of it), then the steps' one-hot start signals stacked in batched backward passes
    (``is_grads_batched``: autograd vmaps the backward over them), ``batch_size`` at a time.
    The embedding's output is the leaf (``inputs_embeds``), as ``attribute_to`` makes it."""
    with torch.enable_grad():
        embedded = subject.embedded(embedding, sequence).requires_grad_(True)
        scores = steps.every_step(subject.forward(embedded))[0]
        matrix = torch.zeros(steps.count, embedded.shape[1], dtype=embedded.dtype)
        for chunk in torch.arange(steps.count).split(batch_size):
            signals = scores.new_zeros(chunk.numel(), steps.count)
            signals[torch.arange(chunk.numel()), chunk] = 1
            (grad,) = torch.autograd.grad(
                scores, embedded, (signals,), retain_graph=True, is_grads_batched=True
            )
            grad = grad[:, 0]  # (steps of the chunk, T, D)
            per_token = (grad * embedded.detach() if method == "input_t_gradient" else grad).sum(-1)
            matrix[chunk] = per_token.detach().to(matrix.dtype).cpu()
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteRelevanceError(
            f"{method}: the gradient of a step's score is NaN or infinite (the model's output "
            "overflows: try float32 or float64)"
        )
    return matrix, scores.detach().cpu()


def _analyzer(
    model: nn.Module,
    method: str,
    attribute_to: str | None,
    options: dict[str, Any],
    length: int,
    part: Hashable,
    cache: dict[Hashable, Analyzer] | None,
) -> Analyzer:
    """The method's analyzer at the token embeddings, reused from ``cache`` for the same
    options and sequence length (integrated gradients' baseline changes with the sequence:
    a new one)."""
    key: Hashable | None = None
    if cache is not None and method != "integrated_gradients":
        try:
            key = (method, attribute_to, tuple(sorted(options.items())), length, part)
            hash(key)
        except TypeError:  # an option that cannot be a key (an array): no reuse
            key = None
    if key is not None and key in cache:
        return cache[key]
    if attribute_to is not None:
        options = {**options, "attribute_to": attribute_to}
    analyzer = create_analyzer(method, model, attribute_sum_axis=-1, **options)
    if key is not None:
        if len(cache) >= _ANALYZERS_KEPT:
            cache.pop(next(iter(cache)))
        cache[key] = analyzer
    return analyzer


def _occlusion(
    subject: _DecoderOnly,
    sequence: torch.Tensor,
    steps: _Steps,
    baseline: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ablation: ``score_k(sequence) - score_k(token i replaced by the baseline)``.

    Captum's ``FeatureAblation`` (``initial_eval - modified_eval``, one feature at a time);
    one forward over the whole sequence gives every step's score at once.
    """
    length = sequence.shape[1]
    with torch.no_grad():
        scores = steps.every_step(subject.logits(sequence))[0]
        matrix = torch.zeros(steps.count, length, dtype=scores.dtype, device=scores.device)
        # The last token is read by no explained step.
        positions = torch.arange(length - 1, device=sequence.device)
        for chunk in positions.split(batch_size):
            ablated = sequence.repeat(chunk.numel(), 1)
            ablated[torch.arange(chunk.numel(), device=chunk.device), chunk] = baseline
            # (rows, steps): every step's score with token chunk[r] ablated.
            per_step = steps.every_step(subject.logits(ablated))
            matrix[:, chunk] = (scores[:, None] - per_step.T).to(matrix.dtype)
    return matrix.cpu(), scores


def _cut_future(matrix: torch.Tensor, prompt_length: int, method: str) -> None:
    """Zero row k at positions >= P + k (in place), refusing a model that looks ahead."""
    steps, length = matrix.shape
    future = torch.arange(length)[None, :] >= prompt_length + torch.arange(steps)[:, None]
    scale = matrix.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)
    leak = (matrix.abs() / scale).masked_fill(~future, 0).amax() if steps else 0
    if float(leak) > _LOOKAHEAD_TOLERANCE:
        raise InputError(
            f"{method}: a step's explanation reaches tokens after the position it is predicted "
            f"from (up to {float(leak):.2g} of the row's largest value): the model is not a "
            "causal language model (an encoder or a bidirectional mask?)"
        )
    matrix.masked_fill_(future, 0.0)


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": False}
    if mask is not None:
        kwargs["attention_mask"] = mask
    output = model(**kwargs)
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise InputError(
            "the model must return logits of shape (batch, tokens, vocabulary), as a Hugging "
            "Face ...ForCausalLM does"
        )
    return logits


def _embedding(model: nn.Module) -> tuple[nn.Embedding, str]:
    """The token embedding and its module path (where the attributions are read)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        raise InputError(
            f"{type(model).__name__} has no token embedding (get_input_embeddings() gives no "
            "nn.Embedding): explain_generation takes a Hugging Face causal language model"
        )
    name = next(n for n, m in model.named_modules() if m is embedding)
    return embedding, name


def _token_ids(name: str, ids: Any, vocab: int, device: torch.device) -> torch.Tensor:
    """Token ids as a ``(1, n)`` int64 tensor, refusing empty, batched or out-of-range ids."""
    try:
        tensor = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{name} must be token ids (ints), got {type(ids).__name__}") from error
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise InputError(f"{name} must be integer token ids, got {tensor.dtype}")
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2 or tensor.shape[0] != 1:
        raise InputError(
            f"{name} must be one sequence, shape (n,) or (1, n); got {tuple(tensor.shape)} "
            "(explain one prompt at a time)"
        )
    if tensor.shape[1] == 0:
        raise InputError(f"{name} is empty: give at least one token")
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise InputError(
            f"{name} holds token id {bad}, outside the model's vocabulary of {vocab} tokens "
            "(a tokenizer of another model?)"
        )
    return tensor.to(device=device, dtype=torch.long)


def _check_tokenizer(tokenizer: Any, vocab: int) -> None:
    """A tokenizer with more tokens than the model's embedding has rows is another model's."""
    try:
        size = len(tokenizer)
    except TypeError as error:
        raise InputError(
            f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}"
        ) from error
    if size > vocab:
        raise InputError(
            f"the tokenizer has {size} tokens but the model's embedding only {vocab}: the "
            "tokenizer does not belong to this model (load both from the same folder)"
        )


def _context_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for field in _CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_context(prompt: int, new: int, context: int | None, encoder_decoder: bool) -> None:
    if context is not None and encoder_decoder and max(prompt, new) > context:
        raise InputError(
            f"the source ({prompt} tokens) or the {new} decoder tokens exceed the model's "
            f"context of {context} tokens: shorten the source or generate fewer tokens"
        )
    if context is not None and not encoder_decoder and prompt + new > context:
        raise InputError(
            f"the prompt ({prompt} tokens) and {new} new tokens exceed the model's context of "
            f"{context} tokens: shorten the prompt or generate fewer tokens"
        )


def _prompt_mask(mask: Any, prompt: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    tensor = torch.as_tensor(mask).to(prompt.device)
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tuple(tensor.shape) != tuple(prompt.shape):
        raise InputError(
            f"attention_mask has shape {tuple(tensor.shape)}, the prompt {tuple(prompt.shape)}"
        )
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise InputError("attention_mask must hold 0 and 1 only")
    return tensor.long()


def _per_step(name: str, value: Any, count: int, vocab: int) -> torch.Tensor:
    """One token id for every step, or one per step."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [int(value)] * count
    tensor = torch.as_tensor(value)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.dim() != 1:
        raise InputError(
            f"{name} must be a token id or one token id per generated token, got {value!r}"
        )
    if tensor.numel() != count:
        raise InputError(f"{name} has {tensor.numel()} token ids for {count} generated tokens")
    if int(tensor.min()) < 0 or int(tensor.max()) >= vocab:
        raise InputError(f"{name} holds a token id outside the model's vocabulary of {vocab}")
    return tensor.long()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _baseline_token(model: nn.Module, token: int | None, vocab: int) -> int:
    if token is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        token = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    if isinstance(token, bool) or not isinstance(token, numbers.Integral):
        raise InputError(f"baseline_token must be a token id, got {token!r}")
    if not 0 <= token < vocab:
        raise InputError(f"baseline_token {token} is outside the vocabulary of {vocab} tokens")
    return int(token)


def _eos_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text as it reads in the decoded sequence, spaces included: the growth of
    the decoded prefix (decoding a token alone drops the space SentencePiece marks with ▁)."""
    texts, before = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end])
        texts.append(
            text[len(before) :] if text.startswith(before) else tokenizer.decode(ids[end - 1 : end])
        )
        before = text
    return texts


def _hidden(
    sequence: torch.Tensor, skip_tokens: Sequence[int | str], tokenizer: Any
) -> torch.Tensor:
    """Positions whose token is one of ``skip_tokens`` (hidden from the displays)."""
    ids: list[int] = []
    for token in skip_tokens:
        if isinstance(token, str):
            if tokenizer is None:
                raise InputError(f"skip_tokens {token!r} is a string: give tokenizer= too")
            ids.append(int(tokenizer.convert_tokens_to_ids(token)))
        elif isinstance(token, numbers.Integral) and not isinstance(token, bool):
            ids.append(int(token))
        else:
            raise InputError(f"skip_tokens takes token ids or strings, got {token!r}")
    return (
        torch.isin(sequence, sequence.new_tensor(ids))
        if ids
        else torch.zeros_like(sequence, dtype=torch.bool)
    )
