"""Explaining what a language model writes: every generated token against its context.

``explain_generation`` generates greedily (or takes the continuation given) and explains each
generated token's logit, or a contrast per step, with respect to every earlier token (prompt
and generated), at the token embeddings; ``explain_classification`` explains a text
classifier's classes (BERT-style, the single-output case) the same way; ``load`` reads a
Hugging Face model folder. See docs/text.md.
"""

from __future__ import annotations

from innspect.text.classification import explain_classification
from innspect.text.generation import (
    METHODS,
    GenerationExplainer,
    explain_generation,
    greedy_continuation,
)
from innspect.text.loading import load
from innspect.text.result import ClassAttribution, TokenAttribution

__all__ = [
    "METHODS",
    "ClassAttribution",
    "GenerationExplainer",
    "TokenAttribution",
    "explain_classification",
    "explain_generation",
    "greedy_continuation",
    "load",
]
