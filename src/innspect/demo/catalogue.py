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

from innspect.analyzers.api import Analyzer
from innspect.analyzers.families import family_of
from innspect.analyzers.parameters import analyzer_parameters
from innspect.analyzers.registry import analyzer_class, describe_analyzers, list_analyzers
from innspect.errors import InnspectError

# One description per analyzer, shown once on the page under its family's introduction
# (``FAMILY_INTRODUCTIONS``), so neither repeats the other. An analyzer not listed (e.g. one a
# later release adds) is described by its class docstring's first line.
EXPLANATIONS = {
    "input": "The input itself: a reminder of what the digit looks like, not an explanation.",
    "random": "Gaussian noise: the baseline every method should beat in the perturbation test.",
    "gradient": "How much a small change of each pixel changes the class score: sensitivity, "
    "not contribution, so often noisy and spread over the background.",
    "gradient.baseline": "The same gradient computed with plain autograd, a cross-check of "
    "the engine: it must look exactly like 'gradient'.",
    "input_t_gradient": "Gradient times the pixel's value: only inked pixels can receive "
    "relevance.",
    "integrated_gradients": "The gradient averaged along the straight path from a black image "
    "to the input, times the input; sums to the change of the score along the path.",
    "smoothgrad": "The gradient averaged over noisy copies of the input, which removes much of "
    "the gradient's noise.",
    "deconvnet": "The backward signal is rectified at every ReLU, ignoring the forward pass's "
    "masks: shows patterns the network responds to, largely independent of the class.",
    "guided_backprop": "Like Deconvnet, but the signal also passes only where the forward ReLU "
    "was active: sharp, yet known to be weakly class-specific.",
    "lrp": "LRP without a rule given, which is the z-rule (iNNvestigate raises instead).",
    "lrp.z": "The z-rule (LRP-0): each input gets relevance in proportion to its "
    "contribution x_i w_ij to the neuron's value, bias included.",
    "lrp.z_IB": "The z-rule with the bias left out of the denominator.",
    "lrp.epsilon": "The z-rule with a small stabiliser in the denominator (epsilon=1e-7) that "
    "absorbs weak or contradictory contributions.",
    "lrp.epsilon_IB": "Epsilon with the bias left out of the denominator.",
    "lrp.w_square": "Relevance shared in proportion to squared weights, whatever the input: a "
    "map of where the network looks in general.",
    "lrp.flat": "Relevance spread uniformly over each neuron's receptive field.",
    "lrp.alpha_beta": "Positive contributions counted alpha times, negative ones beta times "
    "(here alpha=2, beta=1, as lrp.alpha_2_beta_1).",
    "lrp.alpha_2_beta_1": "Alpha-beta with alpha=2, beta=1, bias included.",
    "lrp.alpha_2_beta_1_IB": "Alpha-beta with alpha=2, beta=1, bias ignored.",
    "lrp.alpha_1_beta_0": "Alpha-beta with alpha=1, beta=0: only positive contributions, bias "
    "included.",
    "lrp.alpha_1_beta_0_IB": "Alpha-beta with alpha=1, beta=0, bias ignored.",
    "lrp.z_plus": "z+: only positive contributions count, bias ignored (Deep Taylor's rule "
    "for ReLU layers).",
    "lrp.z_plus_fast": "z+ for non-negative inputs: positive weights times the raw input.",
    "lrp.sequential_preset_a": "Preset A: epsilon on dense layers, alpha1-beta0 on convolutions.",
    "lrp.sequential_preset_b": "Preset B: epsilon on dense layers, alpha2-beta1 on convolutions.",
    "lrp.sequential_preset_a_flat": "Preset A with the flat rule on the input layer.",
    "lrp.sequential_preset_b_flat": "Preset B with the flat rule on the input layer.",
    "lrp.sequential_preset_b_flat_until_idx": "Preset B with the flat rule on the first two "
    "layers (until_layer_idx=1).",
    "lrp.epsilon_plus": "Zennit's EpsilonPlus: z+ on convolutions, epsilon on dense layers.",
    "lrp.epsilon_plus_flat": "EpsilonPlus with the flat rule on the first layer.",
    "lrp.epsilon_gamma_box": "Zennit's EpsilonGammaBox: the box rule (z^B, bounded to the "
    "pixel range [0, 1]) on the input, gamma on the other convolutions, epsilon on dense "
    "layers.",
    "lrp.epsilon_alpha2_beta1": "Zennit's EpsilonAlpha2Beta1: alpha2-beta1 on convolutions, "
    "epsilon on dense layers.",
    "lrp.epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1 with the flat rule on the first layer.",
    "deep_taylor": "z+ on every layer, starting from the positive part of the score: a "
    "first-order Taylor expansion at a root point; positive relevance only.",
    "deep_taylor.bounded": "Deep Taylor with the input layer bounded to the pixel range "
    "[0, 1] (z^B rule).",
}

# What each family has in common, said once per family on the page.
FAMILY_INTRODUCTIONS = {
    "gradient": "Methods built on the gradient of the class score with respect to the input "
    "(and two references: the input itself and noise).",
    "lrp_rule": "Layer-wise relevance propagation (Bach et al. 2015) redistributes the class "
    "score layer by layer down to the pixels; with a conserving rule the pixels' relevances "
    "sum to the score. Here one rule is used on every layer.",
    "lrp_composite": "LRP with different rules for different layers, as recommended by "
    "Kohlbrenner et al. 2020 and Montavon et al. 2019 (iNNvestigate's presets and Zennit's "
    "composites).",
    "deep_taylor": "Deep Taylor decomposition (Montavon et al. 2017) explains each ReLU "
    "neuron by a Taylor expansion at a nearby root point.",
}


@dataclass
class MethodPlan:
    """An analyzer the demo runs."""

    name: str
    options: dict[str, Any]
    analyzer: Analyzer
    relevance: bool
    explanation: str
    family: str  # key of innspect.analyzers.families.FAMILIES


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
    """The page's description of ``name``: its own entry, else its docstring's first line."""
    return EXPLANATIONS.get(name) or docstring_line or name


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
        family = family_of(name, getattr(cls, "family", None)).key
        catalogue.methods.append(
            MethodPlan(name, options, analyzer, relevance, explanation, family)
        )
    return catalogue
