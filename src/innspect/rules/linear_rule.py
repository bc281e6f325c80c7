"""The base of every LRP rule for linear layers (``LinearRule``) and the stabilised divisions
they share.

A rule is "a modified forward, a division, and the transposed operation", written once on
top of :class:`~innspect.graph.linear_ops.LinearOp` so that it serves every layer type;
``LinearRule`` runs it a block of output units or a few samples at a time where its
temporaries would be large. The rules themselves are in ``rules/lrp.py``.

Stabilisers
-----------
``stabilizer=None`` (iNNvestigate's convention): the denominator gets ``1e-7`` added
where it is exactly zero and is left alone elsewhere. A float ``stabilizer`` (Zennit's
convention): ``z + stabilizer * sign(z)`` everywhere, with ``sign(0) = +1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from innspect.engine.reverse import Mapping, NodeContext
from innspect.graph.linear_ops import LinearOp
from innspect.util.checks import check_number

SAFE_DIVIDE_EPSILON = 1e-7  # iNNvestigate's SafeDivide (Keras' K.epsilon())


def sign0(z: torch.Tensor) -> torch.Tensor:
    """Sign of ``z`` with sign(0) = +1."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def stabilize(z: torch.Tensor, stabilizer: float | None) -> torch.Tensor:
    """The denominator ``z`` made safe for division (see the module docstring)."""
    if stabilizer is None:
        return torch.where(z == 0, SAFE_DIVIDE_EPSILON, z).to(z.dtype)
    return signed_shift(z, stabilizer)


def divide_by_stabilized(
    relevance: torch.Tensor,
    denominator: torch.Tensor,
    stabilizer: float | None,
    nonnegative: bool = False,
) -> torch.Tensor:
    """``relevance / stabilize(denominator)``, computed in the memory of ``denominator``.

    The caller hands over ``denominator`` (a temporary of its own): on the first layers of
    an image network every full-size temporary costs tens of MB and a pass over memory.
    ``nonnegative``: the caller knows ``denominator >= 0``, so the signed shift is a plain
    ``+ stabilizer`` (one pass instead of three).
    """
    if stabilizer is None:
        denominator.masked_fill_(denominator == 0, SAFE_DIVIDE_EPSILON)
    elif nonnegative:
        denominator.add_(stabilizer)
    else:
        shift = denominator.new_tensor(stabilizer)  # a Python float would be float32
        denominator.add_(torch.where(denominator >= 0, shift, -shift))
    return divide_into(relevance, denominator)


def divide_into(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, written into ``denominator`` when shapes and dtypes allow."""
    if (
        numerator.shape == denominator.shape
        and numerator.dtype == denominator.dtype
        and not (numerator.requires_grad or denominator.requires_grad)
    ):
        return torch.div(numerator, denominator, out=denominator)
    return numerator / denominator


def signed_shift(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1, in one temporary (the layer outputs of
    an image network are large, and each extra temporary costs an allocation and a pass)."""
    shifted = torch.where(z >= 0, z.new_tensor(epsilon), z.new_tensor(-epsilon))
    return shifted.add_(z)


def check_stabilizer(stabilizer: float | None) -> float | None:
    """Validate a stabiliser option: None or a positive number."""
    if stabilizer is None:
        return None
    return check_number("stabilizer", stabilizer, positive=True)


class LinearRule(Mapping):
    """Base class of the rules applied to a linear node.

    Subclasses implement ``relevance(op, x, z, relevance)`` and list their
    constructor arguments in ``config_keys`` (for ``get_config``).
    """

    rule_name: ClassVar[str] = "LinearRule"
    config_keys: ClassVar[tuple[str, ...]] = ()
    # Rules that build modified copies of the weight (W+, W-, w^2) work on large dense
    # layers piece by piece, so a copy never takes more than this (VGG's first dense layer
    # alone is 400 MB) and each piece is still in cache when its transpose reads it.
    copies_weight: ClassVar[bool] = False
    block_bytes: ClassVar[int] = 16 * 2**20
    # A rule makes several temporaries the size of the layer's output; on the first layers
    # of an image network (VGG: 51 MB per tensor at batch 4) it runs a few samples at a
    # time, so its temporaries stay under this size. Rules whose options hold per-sample
    # tensors (Bounded) set ``splits_batch = False``.
    splits_batch: ClassVar[bool] = True
    sample_bytes: ClassVar[int] = 32 * 2**20

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        op = ctx.linear_op
        inputs = ctx.inputs
        x = inputs[0].detach()
        z = ctx.output.detach()
        hints = self._hints(ctx)
        blocks = op.output_blocks(self.block_bytes) if self.copies_weight else None
        if blocks is not None:
            result = None
            for index, piece in blocks:
                part = self.relevance(piece, x, z[..., index], ctx.signal[..., index], **hints)
                result = part if result is None else result.add_(part)
        else:
            result = self._by_sample_chunks(op, x, z, ctx.signal, hints)
        return [result] + [None] * (len(inputs) - 1)

    def _by_sample_chunks(self, op, x, z, signal, hints) -> torch.Tensor:
        """The rule on the whole batch, or on chunks of samples when the output is large."""
        per_sample = z[:1].numel() * z.element_size()
        chunk = max(1, self.sample_bytes // max(per_sample, 1))
        if not self.splits_batch or z.dim() < 2 or chunk >= z.shape[0]:
            return self.relevance(op, x, z, signal, **hints)
        result = torch.empty_like(x)
        for start in range(0, z.shape[0], chunk):
            rows = slice(start, start + chunk)
            result[rows] = self.relevance(op, x[rows], z[rows], signal[rows], **hints)
        return result

    def _hints(self, ctx: NodeContext) -> dict[str, Any]:
        """Extra knowledge from the graph a rule can use (e.g. that its input is >= 0)."""
        return {}

    def relevance(
        self, op: LinearOp, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor
    ) -> torch.Tensor:
        """Relevance at the layer input given the relevance at its output ``z``."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """``{"rule": name, **arguments}``: enough to rebuild the rule (``rule_from_config``)."""
        config: dict[str, Any] = {"rule": self.rule_name}
        for key in self.config_keys:
            value = getattr(self, key)
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().tolist()
            config[key] = value
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.config_keys)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(type(self))


# -- helpers on a LinearOp ----------------------------------------------------------------
def bias_term(op: LinearOp, z: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | float:
    """``bias`` broadcast against the layer output, or 0."""
    if bias is None:
        return 0.0
    return op.bias_broadcast(bias.to(z.dtype), z)


def without_bias(op: LinearOp, z: torch.Tensor) -> torch.Tensor:
    """``x W`` recovered from the recorded ``z = x W + b`` (no extra forward)."""
    if op.bias is None:
        return z
    return z - bias_term(op, z, op.bias.detach())


def difference(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a - b`` for optional vectors (None is 0); None when the difference is all zeros."""
    if a is None and b is None:
        return None
    difference = (a if a is not None else 0) - (b if b is not None else 0)
    return difference if bool(difference.any()) else None


def positive_part(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def negative_part(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(max=0)
