"""Method families, for figures and pages that show many analyzers: grouping is data.

``FAMILIES`` lists each family, in the order figures show them, with its title, an
introduction said once per family on pages, and whether its relevances conserve the
explained score. Each analyzer class names its family and its own short title
(``Analyzer.family``, ``Analyzer.title``); within a family, methods are shown in the order
they are registered. An analyzer whose family is not listed lands in "other", so a new
method is always shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from innspect.analyzers.registry import analyzer_class, registered


@dataclass(frozen=True)
class Family:
    """A group of methods shown together.

    Attributes
    ----------
    key
        What ``Analyzer.family`` names.
    title
        The group's heading.
    introduction
        What the family's methods have in common, said once on pages.
    conserving
        Whether its relevances should sum to the explained score (a conservation check
        applies).
    """

    key: str
    title: str
    introduction: str = ""
    conserving: bool = False


FAMILIES: tuple[Family, ...] = (
    Family(
        "gradient",
        "Gradient family",
        "Methods built on the gradient of the class score with respect to the input (and two "
        "references: the input itself and noise).",
    ),
    Family(
        "lrp_rule",
        "LRP, one rule on every layer",
        "Layer-wise relevance propagation (Bach et al. 2015) redistributes the class score "
        "layer by layer down to the input; with a conserving rule the inputs' relevances sum "
        "to the score. Here one rule is used on every layer.",
        conserving=True,
    ),
    Family(
        "lrp_composite",
        "LRP presets and composites",
        "LRP with different rules for different layers, as recommended by Kohlbrenner et al. "
        "2020 and Montavon et al. 2019 (iNNvestigate's presets and Zennit's composites).",
        conserving=True,
    ),
    Family(
        "deep_taylor",
        "Deep Taylor",
        "Deep Taylor decomposition (Montavon et al. 2017) explains each ReLU neuron by a "
        "Taylor expansion at a nearby root point.",
        conserving=True,
    ),
    Family(
        "pattern",
        "Patterns",
        "PatternNet and PatternAttribution (Kindermans et al. 2018) learn from data which "
        "direction of each layer's input carries the signal, and propagate that back.",
    ),
    Family(
        "reference",
        "DeepLIFT",
        "DeepLIFT (Shrikumar et al. 2017) explains the difference of the score from its "
        "value at a reference input, sharing it out among the inputs' differences.",
    ),
    Family(
        "occlusion",
        "Occlusion",
        "Occlusion (Zeiler & Fergus 2014) measures how much the score drops when part of the "
        "input is hidden: no gradient, only forward passes.",
    ),
    Family(
        "cam",
        "Class activation maps",
        "Class activation maps (Zhou et al. 2016, Selvaraju et al. 2017) weight the channels of "
        "one layer's feature map (a CNN's last spatial map, or a transformer's patch tokens on "
        "their grid) and upsample the sum to the input: coarse maps of where the evidence is.",
    ),
    Family("other", "Other methods"),
)
_BY_KEY = {family.key: family for family in FAMILIES}
# Where a title is shown without its family above it, these families' titles get a prefix.
_STANDALONE_PREFIX = {"lrp_rule": "LRP ", "lrp_composite": "LRP "}


def family_of(name: str) -> Family:
    """The family of analyzer ``name`` ("other" for unknown names and families)."""
    try:
        key = analyzer_class(name).family
    except KeyError:
        key = "other"
    return _BY_KEY.get(key, _BY_KEY["other"])


def title_of(name: str, in_family: bool = False) -> str:
    """A short readable title for a figure column; ``in_family`` when the family's title is
    shown above it (then "ε" suffices, else "LRP ε"). Unknown names are their own title."""
    try:
        title = analyzer_class(name).title
    except KeyError:
        return name
    if not title or in_family:
        return title or name
    prefix = _STANDALONE_PREFIX.get(family_of(name).key, "")
    return title if prefix.strip() in title else prefix + title


def grouped(names: list[str]) -> list[tuple[Family, list[str]]]:
    """``names`` grouped by family in ``FAMILIES`` order; inside a family in registration
    order, then names the registry does not know, in the given order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(family_of(name).key, []).append(name)
    order = {name: index for index, name in enumerate(registered())}
    return [
        (family, sorted(groups[family.key], key=lambda n: order.get(n, len(order))))
        for family in FAMILIES
        if family.key in groups
    ]
