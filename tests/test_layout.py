"""The package's layout: old import paths keep working with a DeprecationWarning naming the
new path; every method describes itself once (family, title, summary, paper) and the
pages, `innspect methods` and the reference names read that."""

from __future__ import annotations

import importlib
import sys

import pytest

import innspect
from innspect import _moved
from innspect.analyzers.families import FAMILIES, family_of, grouped, title_of
from innspect.analyzers.registry import analyzer_class, describe_analyzers, list_analyzers
from innspect.conformance.names import INNVESTIGATE_METHODS


def _forget(monkeypatch: pytest.MonkeyPatch, old: str) -> None:
    """Import the old path ``old`` afresh (an old path is served, and warns, once per
    process); its parent too where that is an old path itself (innspect.tools)."""
    parent = old.rpartition(".")[0]
    for name in (old, parent):
        if name in sys.modules and (name in _moved.MODULES or name in _moved.NAMES):
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize(
    ("old", "new", "attribute"),
    [
        ("innspect.oracle", "innspect.conformance.oracle", "Linear"),
        ("innspect.fileio", "innspect.util.files", "atomic_path"),
        ("innspect.tools.conservation", "innspect.evaluation.conservation", "conservation_report"),
        ("innspect.tools.pixel_flipping", "innspect.evaluation.pixel_flipping", "pixel_flipping"),
        ("innspect.graph.kinds", "innspect.graph.ops", "Kind"),
        ("innspect.engine.strategy", "innspect.rules.strategy", "realize"),
        ("innspect.references", "innspect.conformance", "check_folder"),
    ],
)
def test_a_moved_module_is_the_new_one_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str, attribute: str
) -> None:
    _forget(monkeypatch, old)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, attribute) is getattr(importlib.import_module(new), attribute)


@pytest.mark.parametrize(
    ("old", "attribute", "new"),
    [
        ("innspect.tools", "PatternComputer", "innspect.patterns.computer"),
        ("innspect.tools", "PerturbationAnalysis", "innspect.evaluation.perturbation"),
        ("innspect.data", "iter_batches", "innspect.util.batches"),
        ("innspect.data", "all_finite", "innspect.util.tensors"),
        ("innspect.dataset", "read_shards", "innspect.distributed.shards"),
        ("innspect.dataset", "ModelSpec", "innspect.loading.models"),
        ("innspect.analyzers.base", "ReverseAnalyzer", "innspect.analyzers.reverse"),
    ],
)
def test_a_name_of_a_split_module_comes_from_its_new_home(
    monkeypatch: pytest.MonkeyPatch, old: str, attribute: str, new: str
) -> None:
    _forget(monkeypatch, old)
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{new}\.{attribute}"):
        value = getattr(module, attribute)
    assert value is getattr(importlib.import_module(new), attribute)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_every_method_describes_itself() -> None:
    keys = {family.key for family in FAMILIES}
    titles: dict[str, set[str]] = {}
    for name in list_analyzers():
        cls = analyzer_class(name)
        assert cls.family in keys and cls.family != "other", name
        assert cls.title and cls.summary, name
        assert cls.summary.endswith("."), name
        assert cls.title not in titles.setdefault(cls.family, set()), (name, cls.title)
        titles[cls.family].add(cls.title)
        if name not in ("input", "random", "gradient.baseline"):
            assert cls.paper, name
    # Subclasses describe themselves, they do not inherit their base's words.
    summaries = describe_analyzers()
    assert summaries["input_t_gradient"] != summaries["gradient"]
    assert summaries["deep_lift.wrapper"] != summaries["deep_lift"]


def test_families_titles_and_groups_come_from_the_classes() -> None:
    assert family_of("lrp.epsilon").key == "lrp_rule"
    assert family_of("no.such.method").key == "other"
    assert title_of("lrp.epsilon", in_family=True) == "ε"
    assert title_of("lrp.epsilon") == "LRP ε"
    assert title_of("no.such.method") == "no.such.method"
    groups = grouped(["occlusion", "lrp.z", "gradient", "lrp.epsilon_plus", "unknown"])
    assert [family.key for family, _ in groups] == [
        "gradient",
        "lrp_rule",
        "lrp_composite",
        "occlusion",
        "other",
    ]
    conserving = {family.key for family in FAMILIES if family.conserving}
    assert conserving == {"lrp_rule", "lrp_composite", "deep_taylor"}


def test_the_innvestigate_names_are_read_from_the_classes() -> None:
    for key, (name, options) in INNVESTIGATE_METHODS.items():
        assert name in list_analyzers(), key
        if not options:
            assert analyzer_class(name).innvestigate == key
    # The 26 configurations of test-data-innvestigate (REFERENCES.md A3).
    for key in ("LRPZ", "LRPEpsilonIgnoreBias", "LRPSequentialPresetBFlat", "DeepTaylor"):
        assert key in INNVESTIGATE_METHODS
    assert INNVESTIGATE_METHODS["SmoothGrad"] == ("smoothgrad", {"seed": 1})


def test_the_registry_is_complete_on_import() -> None:
    assert "pattern.net" in innspect.list_analyzers()  # registered by innspect.patterns
    # 43 methods of waves 1-2 and the 15 class activation maps.
    assert len(innspect.list_analyzers()) == 58
