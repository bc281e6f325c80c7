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

from innspect.analyzers.api import Analyzer, analyzer_parameters
from innspect.analyzers.families import family_of
from innspect.analyzers.registry import analyzer_class, describe_analyzers, list_analyzers
from innspect.errors import InnspectError


@dataclass
class MethodPlan:
    """An analyzer the demo runs."""

    name: str
    options: dict[str, Any]
    analyzer: Analyzer
    relevance: bool  # its family conserves the score (a conservation check applies)
    explanation: str  # the method's summary
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
        family = family_of(name)
        catalogue.methods.append(
            MethodPlan(name, options, analyzer, family.conserving, docs[name], family.key)
        )
    return catalogue
