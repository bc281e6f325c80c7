"""Which registered analyzers the demo runs, with which arguments, and why others are skipped.

The demo never lists methods by hand: it takes every registered analyzer, gives it the demo's
arguments for the parameters it accepts (e.g. the input range [0, 1] as ``low``/``high`` for
bounded rules), and tries it on two images. An analyzer that raises an innspect error for the
model, or needs an argument the demo cannot choose, is skipped with the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from innspect.analyzers.base import Analyzer
from innspect.analyzers.parameters import analyzer_parameters
from innspect.analyzers.registry import analyzer_class, describe_analyzers, list_analyzers
from innspect.errors import InnspectError

# Explanations for the page, by name or by name prefix (the longest match wins); the class
# docstring's first line is used for anything not listed, so new analyzers still get one.
EXPLANATIONS = {
    "input": "The input itself: a reminder of what the digit looks like, not an explanation.",
    "random": "Gaussian noise: the baseline every method should beat in the perturbation test.",
    "gradient": "How much a small change of each pixel changes the class score (sensitivity, "
    "not contribution): often noisy and spread over the background.",
    "gradient.baseline": "The gradient computed with plain autograd, a cross-check of the "
    "engine: it must look exactly like 'gradient'.",
    "input_t_gradient": "Input times gradient: sensitivity weighted by the pixel's value, so "
    "only inked pixels can receive relevance.",
    "deconvnet": "Deconvnet: the backward signal is rectified at every ReLU; shows patterns the "
    "network responds to, largely independent of the class.",
    "guided_backprop": "Guided backprop: rectified signal that also respects the forward ReLU "
    "masks; sharp, but known to be weakly class-specific.",
    "integrated_gradients": "Integrated gradients: the gradient averaged along the path from a "
    "black image to the input, times the input; sums to the score difference.",
    "smoothgrad": "SmoothGrad: the gradient averaged over noisy copies of the input, which "
    "removes much of the gradient's noise.",
    "lrp": "Layer-wise relevance propagation: the class score is redistributed layer by layer "
    "to the pixels, so relevances sum (approximately) to the score.",
    "lrp.z": "LRP-0 (z-rule): relevance shared in proportion to each input's contribution.",
    "lrp.epsilon": "LRP-epsilon: the z-rule with a stabiliser that absorbs weak or "
    "contradictory contributions, giving cleaner maps.",
    "lrp.alpha": "LRP-alpha-beta: positive and negative contributions weighted separately "
    "(alpha - beta = 1).",
    "lrp.z_plus": "LRP-z+: only positive contributions count (Deep Taylor's rule for ReLU layers).",
    "lrp.w_square": "LRP-w^2: relevance shared by squared weights, independent of the input.",
    "lrp.flat": "LRP-flat: relevance spread uniformly over each neuron's receptive field.",
    "lrp.sequential_preset": "An LRP preset: epsilon on dense layers, alpha-beta on "
    "convolutions (iNNvestigate's recommended rule sets).",
    "lrp.epsilon_plus": "Zennit's composite: epsilon on dense layers, z+ on convolutions.",
    "lrp.epsilon_gamma_box": "Zennit's composite: epsilon on dense layers, gamma on "
    "convolutions, the box rule (z^B) on the input.",
    "lrp.epsilon_alpha2_beta1": "Zennit's composite: epsilon on dense layers, alpha2-beta1 on "
    "convolutions.",
    "deep_taylor": "Deep Taylor decomposition: z+ on ReLU layers, the first-order Taylor "
    "expansion at a root point; positive relevance only.",
    "deep_taylor.bounded": "Deep Taylor with the input layer bounded to the pixel range "
    "[0, 1] (z^B rule).",
}


@dataclass
class MethodPlan:
    """An analyzer the demo runs."""

    name: str
    options: dict[str, Any]
    analyzer: Analyzer
    relevance: bool
    explanation: str


@dataclass
class Catalogue:
    """The demo's methods and those it could not run."""

    methods: list[MethodPlan] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not applicable to the model
    failed: list[tuple[str, str]] = field(default_factory=list)  # unexpected errors (bugs)


# Arguments for methods that need one to make sense on this model, by analyzer name.
NAMED_ARGUMENTS: dict[str, dict[str, Any]] = {
    # Flat rule on the first two convolutions, then preset B.
    "lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 1},
    # The general alpha-beta rule needs its parameters; these equal lrp.alpha_2_beta_1's.
    "lrp.alpha_beta": {"alpha": 2.0, "beta": 1.0},
}
# Bounds of the input for bounded rules (z^B), given to analyzers whose own __init__ names them.
BOUND_PARAMETERS = ("low", "high")
# Method families whose relevances should sum to the explained score.
RELEVANCE_PREFIXES = ("lrp", "deep_taylor")


def tuning_arguments(fast: bool) -> dict[str, Any]:
    """Cost and reproducibility settings, by parameter name (given wherever accepted)."""
    return {
        "steps": 8 if fast else 32,  # integrated gradients
        "augment_by_n": 8 if fast else 32,  # smoothgrad
        "noise_scale": 0.15,  # 15 % of the pixel range, as the SmoothGrad paper suggests
        "seed": 0,  # reproducible random and smoothgrad noise
        "batch_size": 512,
    }


def demo_options(name: str, cls: type, fast: bool, value_range: tuple[float, float]) -> dict:
    """The options the demo gives analyzer ``name`` (class ``cls``)."""
    own, _, _ = analyzer_parameters(cls, inherited=False)
    accepted, _, _ = analyzer_parameters(cls)
    options = {k: v for k, v in tuning_arguments(fast).items() if k in accepted}
    options.update({k: v for k, v in zip(BOUND_PARAMETERS, value_range, strict=True) if k in own})
    options.update(NAMED_ARGUMENTS.get(name, {}))
    return options


def is_relevance_method(name: str) -> bool:
    """Whether ``name`` belongs to a family that redistributes the score (LRP, Deep Taylor)."""
    return any(name == p or name.startswith(p + ".") for p in RELEVANCE_PREFIXES)


def explanation_for(name: str, docstring_line: str) -> str:
    """The page's explanation of ``name``: the longest matching entry, else the docstring."""
    if name in EXPLANATIONS:
        return EXPLANATIONS[name]
    prefixes = [key for key in EXPLANATIONS if name.startswith(key)]
    generic = EXPLANATIONS[max(prefixes, key=len)] if prefixes else ""
    if docstring_line and generic:
        return f"{docstring_line.rstrip('.')}. {generic}"
    return docstring_line or generic or name


def build_catalogue(
    model: nn.Module,
    probe: torch.Tensor,
    train_data: torch.Tensor,
    fast: bool,
    value_range: tuple[float, float],
    debug: bool = False,
) -> Catalogue:
    """Create every registered analyzer that works on ``model`` (tried on ``probe``)."""
    docs = describe_analyzers()
    catalogue = Catalogue()
    for name in list_analyzers():
        cls = analyzer_class(name)
        options = demo_options(name, cls, fast, value_range)
        _, required, _ = analyzer_parameters(cls, inherited=False)
        missing = sorted(required - set(options))
        if missing:
            catalogue.skipped.append(
                (name, f"needs arguments the demo cannot choose: {', '.join(missing)}")
            )
            continue
        try:
            analyzer = cls(model, **options)
            if cls.is_trainable:
                analyzer.fit(train_data)
            analyzer.explain(probe)
        except InnspectError as error:
            catalogue.skipped.append((name, str(error)))
            continue
        except Exception as error:  # noqa: BLE001 - a broken analyzer must not stop the demo
            if debug:
                raise
            catalogue.failed.append((name, f"{type(error).__name__}: {error}"))
            continue
        relevance = is_relevance_method(name)
        explanation = explanation_for(name, docs.get(name, ""))
        catalogue.methods.append(MethodPlan(name, options, analyzer, relevance, explanation))
    return catalogue
