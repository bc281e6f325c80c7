"""Method families and readable titles, for figures and pages that show many analyzers.

Grouping is data: ``FAMILIES`` lists each family with the names and name prefixes it holds, in
the order figures show them; an analyzer class may also name its family in a ``family`` class
attribute (a key of ``FAMILIES``). Anything else lands in "other", so a newly registered
analyzer is always shown, under its own name until ``TITLES`` gives it a shorter one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A group of methods shown together."""

    key: str
    title: str
    names: tuple[str, ...] = ()  # exact analyzer names
    prefixes: tuple[str, ...] = ()  # name prefixes (e.g. "pattern.")


FAMILIES: tuple[Family, ...] = (
    Family(
        "gradient",
        "Gradient family",
        names=(
            "input",
            "random",
            "gradient",
            "gradient.baseline",
            "input_t_gradient",
            "integrated_gradients",
            "smoothgrad",
            "deconvnet",
            "guided_backprop",
        ),
    ),
    Family(
        "lrp_rule",
        "LRP, one rule on every layer",
        names=("lrp",),
        prefixes=("lrp.z", "lrp.epsilon", "lrp.w_square", "lrp.flat", "lrp.alpha"),
    ),
    Family(
        "lrp_composite",
        "LRP presets and composites",
        names=(
            "lrp.epsilon_plus",
            "lrp.epsilon_plus_flat",
            "lrp.epsilon_gamma_box",
            "lrp.epsilon_alpha2_beta1",
            "lrp.epsilon_alpha2_beta1_flat",
            "lrp.attn",
            "lrp.cp",
        ),
        prefixes=("lrp.sequential_preset",),
    ),
    Family("deep_taylor", "Deep Taylor", prefixes=("deep_taylor",)),
    Family("pattern", "Patterns", prefixes=("pattern",)),
    Family("reference", "DeepLIFT", prefixes=("deep_lift", "deeplift")),
    Family("occlusion", "Occlusion", prefixes=("occlusion",)),
    Family("other", "Other methods"),
)
_BY_KEY = {family.key: family for family in FAMILIES}

# Short titles for figure columns (the family is shown above them, so "ε" under
# "LRP, one rule on every layer" reads as LRP-ε). Names not listed are shown as they are.
TITLES: dict[str, str] = {
    "input": "input",
    "random": "random (baseline)",
    "gradient": "gradient",
    "gradient.baseline": "gradient (autograd)",
    "input_t_gradient": "input × gradient",
    "integrated_gradients": "integrated gradients",
    "smoothgrad": "SmoothGrad",
    "deconvnet": "Deconvnet",
    "guided_backprop": "guided backprop",
    "lrp": "LRP (default: z)",
    "lrp.z": "z",
    "lrp.z_IB": "z, bias ignored",
    "lrp.epsilon": "ε",
    "lrp.epsilon_IB": "ε, bias ignored",
    "lrp.w_square": "w²",
    "lrp.flat": "flat",
    "lrp.alpha_beta": "α-β (α=2, β=1)",
    "lrp.alpha_2_beta_1": "α2β1",
    "lrp.alpha_2_beta_1_IB": "α2β1, bias ignored",
    "lrp.alpha_1_beta_0": "α1β0",
    "lrp.alpha_1_beta_0_IB": "α1β0, bias ignored",
    "lrp.z_plus": "z+",
    "lrp.z_plus_fast": "z+ fast",
    "lrp.sequential_preset_a": "preset A",
    "lrp.sequential_preset_b": "preset B",
    "lrp.sequential_preset_a_flat": "preset A, flat input",
    "lrp.sequential_preset_b_flat": "preset B, flat input",
    "lrp.sequential_preset_b_flat_until_idx": "preset B, flat to layer 1",
    "lrp.epsilon_plus": "ε + z+",
    "lrp.epsilon_plus_flat": "ε + z+, flat input",
    "lrp.epsilon_gamma_box": "ε + γ + box",
    "lrp.epsilon_alpha2_beta1": "ε + α2β1",
    "lrp.epsilon_alpha2_beta1_flat": "ε + α2β1, flat input",
    "lrp.attn": "AttnLRP",
    "lrp.cp": "CP-LRP",
    "deep_taylor": "Deep Taylor",
    "deep_taylor.bounded": "Deep Taylor, bounded",
    "pattern.net": "PatternNet",
    "pattern.attribution": "Pattern Attribution",
    "deep_lift": "DeepLIFT",
    "deep_lift.wrapper": "DeepLIFT (wrapper)",
    "deep_lift_shap": "DeepLift SHAP",
    "occlusion": "occlusion",
}


def family_of(name: str, declared: str | None = None) -> Family:
    """The family of analyzer ``name``: ``declared`` (a class's ``family``) wins, then the
    exact names, then the longest matching prefix, else "other"."""
    if declared in _BY_KEY:
        return _BY_KEY[declared]
    for family in FAMILIES:
        if name in family.names:
            return family
    matches = [
        (len(prefix), family)
        for family in FAMILIES
        for prefix in family.prefixes
        if name == prefix or name.startswith(prefix)
    ]
    return max(matches, key=lambda item: item[0])[1] if matches else _BY_KEY["other"]


# Where a title is shown without its family above it, these families' titles get a prefix.
_STANDALONE_PREFIX = {"lrp_rule": "LRP ", "lrp_composite": "LRP "}


def title_of(name: str, in_family: bool = False) -> str:
    """A short readable title for a figure column; ``in_family`` when the family's title is
    shown above it (then "ε" suffices, else "LRP ε")."""
    title = TITLES.get(name, name)
    if in_family or name not in TITLES:
        return title
    prefix = _STANDALONE_PREFIX.get(family_of(name).key, "")
    return title if prefix.strip() in title else prefix + title


def grouped(
    names: list[str], declared: dict[str, str | None] | None = None
) -> list[tuple[Family, list[str]]]:
    """``names`` grouped by family in ``FAMILIES`` order; inside a family in ``TITLES`` order,
    then names it does not list, in the given order."""
    declared = declared or {}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(family_of(name, declared.get(name)).key, []).append(name)
    order = {name: index for index, name in enumerate(TITLES)}  # TITLES lists a reading order
    return [
        (family, sorted(groups[family.key], key=lambda n: order.get(n, len(order))))
        for family in FAMILIES
        if family.key in groups
    ]
