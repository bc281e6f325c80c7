"""AttnLRP and CP-LRP: LRP for transformers and modern CNNs (SPEC "Modern architectures").

``lrp.attn`` (Achtibat et al. 2024, "AttnLRP", arXiv 2402.05602; its implementation LXT):
the epsilon rule on every linear layer, the z-rule with the same stabiliser on sums (a
constant addend, such as a position embedding, is a bias that absorbs its share),
the gate / uniform rule on element-wise products, the epsilon-uniform rule on matrix
products of two signals, AttnLRP's softmax rule, LayerNorm with its standard deviation
held constant, identity on RMSNorm and element-wise non-linearities.
``lrp.cp`` (Ali et al. 2022, "XAI for Transformers: Better Explanations through
Conservative Propagation"): the same, with the attention probabilities held constant (no
relevance through the softmax into ``Q K^T``); conservative at every node of a bias-free
network.
"""

from __future__ import annotations

from typing import Any

from innspect.analyzers.lrp import LRP
from innspect.analyzers.plan import Composite, Site, kind, lrp_default
from innspect.analyzers.presets import Preset
from innspect.graph.ops import Kind, is_sum
from innspect.rules.lrp import Epsilon
from innspect.rules.lrp_nodes import ZRuleNoParam, modern_node_mapping
from innspect.rules.modern import ATTN_EPSILON
from innspect.util.checks import check_number


def attention_composite(epsilon: float = ATTN_EPSILON, cp: bool = False) -> Composite:
    """The composite of ``lrp.attn`` (``cp=False``) or ``lrp.cp`` (``cp=True``)."""
    epsilon = check_number("epsilon", epsilon, positive=True)
    name = "lrp.cp" if cp else "lrp.attn"

    def default(site: Site) -> Any:
        info = site.info
        if info.kind is Kind.IDENTITY and is_sum(info.node):
            # x + c with c constant (position embeddings): c is a bias that absorbs its
            # share, as in the epsilon rule and in LXT's gradient x input.
            return ZRuleNoParam(epsilon)
        rule = modern_node_mapping(site.info, epsilon, cp=cp, absorb=True)
        return rule if rule is not None else lrp_default(site, name, epsilon)

    rule = Epsilon(epsilon=epsilon, bias=True)
    return Composite(
        [(kind(Kind.LINEAR), rule), (kind(Kind.BATCHNORM), rule)], default=default, name=name
    )


PRESETS: list[Preset] = [
    Preset(
        "lrp.attn",
        LRP,
        "AttnLRP (Achtibat et al. 2024): epsilon on linear layers, the softmax, matmul, "
        "product and LayerNorm rules of the paper.",
        lambda epsilon=ATTN_EPSILON: {"composite": attention_composite(epsilon, cp=False)},
        family="lrp_composite",
        title="AttnLRP",
        summary=(
            "AttnLRP: LRP for transformers, with rules for the softmax, matrix products of "
            "two signals and LayerNorm that keep relevance conserved through attention."
        ),
        paper="Achtibat et al. 2024, ICML (arXiv 2402.05602)",
    ),
    Preset(
        "lrp.cp",
        LRP,
        "CP-LRP (Ali et al. 2022): as lrp.attn with the attention probabilities held "
        "constant (conservative).",
        lambda epsilon=ATTN_EPSILON: {"composite": attention_composite(epsilon, cp=True)},
        family="lrp_composite",
        title="CP-LRP",
        summary=(
            "CP-LRP: LRP for transformers with the attention weights held constant, so "
            "relevance flows through the values only."
        ),
        paper="Ali et al. 2022, ICML (arXiv 2202.07304)",
    ),
]

ANALYZERS: list[Any] = [*PRESETS]
