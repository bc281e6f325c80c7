"""LRP rules for linear layers (Linear, ConvNd, ConvTransposeNd, unfused BatchNorm).

Every rule is "a modified forward, a division, and the transposed operation": it is
written once on top of :class:`~innspect.graph.linear_ops.LinearOp` and serves every
layer type. Rules that only need the layer's own ``z`` reuse the recorded output, so
they cost one transposed operation and no extra forward.

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
    if isinstance(stabilizer, bool) or not isinstance(stabilizer, int | float):
        raise TypeError(f"stabilizer must be None or a number, got {type(stabilizer).__name__}")
    if stabilizer <= 0:
        raise ValueError(f"stabilizer must be > 0 (or None), got {stabilizer}")
    return float(stabilizer)


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
def _bias_term(op: LinearOp, z: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | float:
    """``bias`` broadcast against the layer output, or 0."""
    if bias is None:
        return 0.0
    return op.bias_broadcast(bias.to(z.dtype), z)


def _without_bias(op: LinearOp, z: torch.Tensor) -> torch.Tensor:
    """``x W`` recovered from the recorded ``z = x W + b`` (no extra forward)."""
    if op.bias is None:
        return z
    return z - _bias_term(op, z, op.bias.detach())


def _difference(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a - b`` for optional vectors (None is 0); None when the difference is all zeros."""
    if a is None and b is None:
        return None
    difference = (a if a is not None else 0) - (b if b is not None else 0)
    return difference if bool(difference.any()) else None


def _positive(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def _negative(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(max=0)


# -- the rules ----------------------------------------------------------------------------
class Z(LinearRule):
    """LRP-0: ``R_i = x_i * sum_j w_ij R_j / z_j``.

    Parameters
    ----------
    bias
        Keep the bias in ``z`` (False: ``lrp.z_IB``).
    stabilizer
        None: add 1e-7 where ``z == 0`` (iNNvestigate); a float: Zennit's signed shift.
    """

    rule_name = "Z"
    config_keys = ("bias", "stabilizer")

    def __init__(self, bias: bool = True, stabilizer: float | None = None) -> None:
        self.bias = bool(bias)
        self.stabilizer = check_stabilizer(stabilizer)

    def _denominator(self, op: LinearOp, z: torch.Tensor) -> torch.Tensor:
        return stabilize(z if self.bias else _without_bias(op, z), self.stabilizer)

    def relevance(self, op, x, z, relevance):
        # z is the recorded output: no extra forward, one transposed operation.
        s = divide_into(relevance, self._denominator(op, z))
        return op.transpose(s, op.weight, x).mul_(x)


class Epsilon(Z):
    """LRP-epsilon: denominator ``z + epsilon * sign(z)`` with sign(0) = +1.

    Parameters
    ----------
    epsilon
        Must be > 0.
    bias
        Keep the bias in ``z`` (False: ``lrp.epsilon_IB``).
    """

    rule_name = "Epsilon"
    config_keys = ("epsilon", "bias")

    def __init__(self, epsilon: float = 1e-7, bias: bool = True) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
            raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
        if epsilon <= 0:
            raise ValueError(
                f"epsilon must be > 0, got {epsilon}; use the Z rule for an unstabilised division"
            )
        super().__init__(bias=bias)
        self.epsilon = float(epsilon)

    def _denominator(self, op: LinearOp, z: torch.Tensor) -> torch.Tensor:
        return signed_shift(z if self.bias else _without_bias(op, z), self.epsilon)


class WSquare(LinearRule):
    """Deep Taylor's w^2 rule: ``R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j``; no bias, no x.

    The denominator is the squared-weight operation applied to ones, so convolution
    borders (where fewer inputs contribute) are right.
    """

    rule_name = "WSquare"
    copies_weight = True
    config_keys = ("stabilizer",)

    def __init__(self, stabilizer: float | None = None) -> None:
        self.stabilizer = check_stabilizer(stabilizer)

    def _weight(self, op: LinearOp) -> torch.Tensor:
        return op.weight.detach().square()

    def relevance(self, op, x, z, relevance):
        weight = self._weight(op).to(x.dtype)
        # One sample of ones is enough: the denominator does not depend on x.
        ones = torch.ones((1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        denominator = stabilize(op.forward(ones, weight, None), self.stabilizer)
        return op.transpose(relevance / denominator, weight, x)


class Flat(WSquare):
    """The w^2 rule with every weight set to 1 (relevance spread uniformly over the field)."""

    rule_name = "Flat"

    def _weight(self, op: LinearOp) -> torch.Tensor:
        return torch.ones_like(op.weight)


def infer_alpha_beta(alpha: float | None, beta: float | None) -> tuple[float, float]:
    """Check (alpha, beta) or infer the missing one from alpha - beta = 1."""
    if alpha is None and beta is None:
        raise ValueError("AlphaBeta needs alpha or beta (alpha - beta = 1), e.g. alpha=2, beta=1")
    for label, value in (("alpha", alpha), ("beta", beta)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"{label} must be a number, got {type(value).__name__}")
    if alpha is None:
        alpha = beta + 1
    if beta is None:
        beta = alpha - 1
    if abs((alpha - beta) - 1) > 1e-12:
        raise ValueError(f"AlphaBeta needs alpha - beta = 1, got alpha={alpha}, beta={beta}")
    if alpha < 1 or beta < 0:
        raise ValueError(
            f"AlphaBeta needs alpha >= 1 and beta >= 0, got alpha={alpha}, beta={beta}"
        )
    return float(alpha), float(beta)


class AlphaBeta(LinearRule):
    """LRP-alpha-beta: positive and negative contributions propagated separately.

    Activator relevance goes back through ``x+ W+`` and ``x- W-`` with their common
    denominator, inhibitor relevance through ``x+ W-`` and ``x- W+``; the result is
    ``alpha * R_activator - beta * R_inhibitor``.

    Parameters
    ----------
    alpha, beta
        alpha - beta = 1, alpha >= 1, beta >= 0; give one and the other is inferred.
    bias
        Include the bias in the denominators.
    stabilizer
        None (iNNvestigate: 1e-7 where the denominator is 0) or Zennit's signed shift.
    split_bias
        False (iNNvestigate): both denominators get the whole bias ``b``. True (Zennit):
        the activator gets ``b+`` and the inhibitor ``b-``.
    """

    rule_name = "AlphaBeta"
    copies_weight = True
    config_keys = ("alpha", "beta", "bias", "stabilizer", "split_bias")

    def __init__(
        self,
        alpha: float | None = None,
        beta: float | None = None,
        bias: bool = True,
        stabilizer: float | None = None,
        split_bias: bool = False,
    ) -> None:
        self.alpha, self.beta = infer_alpha_beta(alpha, beta)
        self.bias = bool(bias)
        self.stabilizer = check_stabilizer(stabilizer)
        self.split_bias = bool(split_bias)

    def _bias_vectors(self, op: LinearOp) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The activator's bias, and what the inhibitor ``x W - act`` must lose of ``b``.

        The inhibitor's ``x+ W- + x- W+`` is ``x W - (x+ W+ + x- W-)``, and the recorded
        ``z`` is ``x W + b``; so the inhibitor denominator ``x+ W- + x- W+ + b_inh`` is
        ``z - act - (b - b_inh)``: nothing to subtract when both get the whole bias.
        """
        if op.bias is None:
            return None, None
        b = op.bias.detach()
        if not self.bias:
            return None, b
        if self.split_bias:
            return _positive(b), _positive(b)  # b - b- = b+
        return b, None

    def _hints(self, ctx: NodeContext) -> dict[str, Any]:
        return {"nonnegative": ctx.input_nonnegative or None}

    def relevance(self, op, x, z, relevance, nonnegative: bool | None = None):
        # Written for memory and passes: every full-size temporary is computed in place,
        # freed or reused as soon as it is spent (on the first layers of an image network
        # each one is tens of MB).
        weight = op.weight.detach()
        w_pos = _positive(weight)
        # W- only when a term uses it: for a dense layer of VGG each copy is 400 MB.
        w_neg = _negative(weight) if self.beta or not nonnegative else None
        if nonnegative is None:
            nonnegative = not bool((x < 0).any())
        x_pos = x if nonnegative else _positive(x)
        x_neg = None if nonnegative else _negative(x)
        if w_neg is None and x_neg is not None:
            w_neg = _negative(weight)
        bias_act, inhibitor_loses = self._bias_vectors(op)
        # The activator's bias goes into the forward (free in a convolution kernel).
        act = op.forward(x_pos, w_pos, bias_act)  # x+ W+ + b_act
        if x_neg is not None:
            act += op.forward(x_neg, w_neg, None)  # + x- W-
        inhibitor = None
        if self.beta:
            inhibitor = torch.sub(z, act)  # z - act - b_inh_loses, with act's bias put back
            correction = _difference(bias_act, inhibitor_loses)
            if correction is not None:
                inhibitor += _bias_term(op, z, correction)
        if x_neg is None:
            # x >= 0: x * (alpha W+^T s_act - beta W-^T s_inh), one product with x. With no
            # bias or Zennit's b+, the activator x W+ + b_act is >= 0 by construction.
            act_nonnegative = bias_act is None or self.split_bias
            s = divide_by_stabilized(relevance, act, self.stabilizer, act_nonnegative)
            del act
            result = op.transpose(s, w_pos, x)
            del s
            if self.alpha != 1:
                result *= self.alpha
            if inhibitor is not None:
                s = divide_by_stabilized(relevance, inhibitor, self.stabilizer)
                del inhibitor
                result.sub_(op.transpose(s, w_neg, x), alpha=self.beta)
            return result.mul_(x)
        result = self._share(op, relevance, act, x_pos, x_neg, w_pos, w_neg, x)
        del act  # its memory held the activator's s; free it before the inhibitor's pass
        if self.alpha != 1:
            result *= self.alpha
        if inhibitor is not None:
            shared = self._share(op, relevance, inhibitor, x_pos, x_neg, w_neg, w_pos, x)
            result.sub_(shared, alpha=self.beta)
        return result

    def _share(self, op, relevance, denominator, x_pos, x_neg, w_first, w_second, x):
        """``x+ * W_first^T s + x- * W_second^T s`` with ``s = relevance / denominator``.

        Consumes ``denominator`` (``s`` is computed in its memory).
        """
        s = divide_by_stabilized(relevance, denominator, self.stabilizer)
        result = op.transpose(s, w_first, x)
        result *= x_pos
        if x_neg is not None:
            second = op.transpose(s, w_second, x)
            second *= x_neg
            result += second
        return result


class ZPlus(AlphaBeta):
    """The z+ rule as iNNvestigate defines it: AlphaBeta(1, 0) ignoring the bias."""

    rule_name = "ZPlus"
    config_keys = ("stabilizer",)

    def __init__(self, stabilizer: float | None = None) -> None:
        super().__init__(alpha=1, beta=0, bias=False, stabilizer=stabilizer)


class ZPlusFast(LinearRule):
    """z+ for non-negative inputs: only ``W+``, no bias, the raw ``x`` (assumes x >= 0)."""

    rule_name = "ZPlusFast"
    copies_weight = True
    config_keys = ("stabilizer",)

    def __init__(self, stabilizer: float | None = None) -> None:
        self.stabilizer = check_stabilizer(stabilizer)

    def relevance(self, op, x, z, relevance):
        w_pos = _positive(op.weight.detach())
        s = relevance / stabilize(op.forward(x, w_pos, None), self.stabilizer)
        return x * op.transpose(s, w_pos, x)


def _bound_tensor(value: Any, x: torch.Tensor, label: str) -> torch.Tensor:
    """``value`` (scalar or tensor) broadcast to ``x``; batch axis kept at 1 when possible."""
    bound = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    try:
        full = torch.broadcast_to(bound, x.shape)
    except RuntimeError as error:
        raise ValueError(
            f"Bounded: {label} of shape {tuple(bound.shape)} does not broadcast to the layer "
            f"input of shape {tuple(x.shape)}; give a scalar or a tensor broadcastable to it"
        ) from error
    if bound.dim() < x.dim() or bound.shape[0] == 1:
        return full[:1].contiguous()  # the same for every sample: one forward row suffices
    return full


class Bounded(LinearRule):
    """z^B for inputs known to lie in [low, high] (Deep Taylor, Montavon et al. 2017).

    ``z = x W - low W+ - high W-`` and
    ``R_i = sum_j (x_i w_ij - low_i w+_ij - high_i w-_ij) R_j / z_j``; no bias.

    Parameters
    ----------
    low, high
        Scalars or tensors broadcastable to the layer input (numpy broadcasting).
    """

    rule_name = "Bounded"
    copies_weight = True
    splits_batch = False  # low / high may hold one row per sample
    config_keys = ("low", "high", "stabilizer")

    def __init__(self, low: Any = -1.0, high: Any = 1.0, stabilizer: float | None = None) -> None:
        for label, value in (("low", low), ("high", high)):
            if value is None:
                raise ValueError(f"Bounded needs {label} (a number or a tensor)")
        low_t, high_t = torch.as_tensor(low), torch.as_tensor(high)
        try:
            if bool((torch.broadcast_tensors(low_t, high_t)[0] > high_t).any()):
                raise ValueError(f"Bounded needs low <= high, got low={low}, high={high}")
        except RuntimeError as error:
            raise ValueError("Bounded: low and high do not broadcast together") from error
        self.low = low if not isinstance(low, torch.Tensor) else low.detach()
        self.high = high if not isinstance(high, torch.Tensor) else high.detach()
        self.stabilizer = check_stabilizer(stabilizer)

    def relevance(self, op, x, z, relevance):
        weight = op.weight.detach()
        w_pos, w_neg = _positive(weight), _negative(weight)
        low, high = _bound_tensor(self.low, x, "low"), _bound_tensor(self.high, x, "high")
        # x W comes from the recorded z; only the two bound terms need a forward.
        denominator = (
            _without_bias(op, z) - op.forward(low, w_pos, None) - op.forward(high, w_neg, None)
        )
        s = relevance / stabilize(denominator, self.stabilizer)
        return (
            x * op.transpose(s, weight, x)
            - low * op.transpose(s, w_pos, x)
            - high * op.transpose(s, w_neg, x)
        )


class Gamma(LinearRule):
    """LRP-gamma (Montavon et al. 2019): the z-rule with ``w + gamma * w+`` and ``b + gamma * b+``.

    Parameters
    ----------
    gamma
        Weight of the added positive part (>= 0).
    bias
        Keep the bias.
    stabilizer
        None (iNNvestigate style) or Zennit's signed shift.
    generalized
        False: the plain rule above everywhere. True: Zennit 0.5.1's generalised rule, which
        also handles negative inputs and outputs: where ``z > 0`` the denominator is
        ``x+ (w + g w+) + x- (w + g w-) + b + g b+``, where ``z < 0`` it is
        ``x+ (w + g w-) + x- (w + g w+) + b + g b-``, and where ``z == 0`` no relevance
        passes. For x >= 0 and z > 0 both forms agree.
    """

    rule_name = "Gamma"
    copies_weight = True
    config_keys = ("gamma", "bias", "stabilizer", "generalized")

    def __init__(
        self,
        gamma: float = 0.25,
        bias: bool = True,
        stabilizer: float | None = None,
        generalized: bool = False,
    ) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, int | float):
            raise TypeError(f"gamma must be a number, got {type(gamma).__name__}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.bias = bool(bias)
        self.stabilizer = check_stabilizer(stabilizer)
        self.generalized = bool(generalized)

    def _biases(self, op: LinearOp) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.bias or op.bias is None:
            return None, None
        b = op.bias.detach()
        return b + self.gamma * _positive(b), b + self.gamma * _negative(b)

    def relevance(self, op, x, z, relevance):
        weight = op.weight.detach()
        w_up = weight + self.gamma * _positive(weight)
        b_up, b_down = self._biases(op)
        if not self.generalized:
            s = relevance / stabilize(op.forward(x, w_up, b_up), self.stabilizer)
            return x * op.transpose(s, w_up, x)
        w_down = weight + self.gamma * _negative(weight)
        mask_pos = (z > 0).to(z.dtype)
        mask_neg = (z < 0).to(z.dtype)
        if not bool((x < 0).any()):
            den_pos = op.forward(x, w_up, b_up)
            den_neg = op.forward(x, w_down, b_down)
            s_pos = relevance * mask_pos / stabilize(den_pos, self.stabilizer)
            s_neg = relevance * mask_neg / stabilize(den_neg, self.stabilizer)
            return x * (op.transpose(s_pos, w_up, x) + op.transpose(s_neg, w_down, x))
        x_pos, x_neg = _positive(x), _negative(x)
        den_pos = op.forward(x_pos, w_up, b_up) + op.forward(x_neg, w_down, None)
        den_neg = op.forward(x_pos, w_down, b_down) + op.forward(x_neg, w_up, None)
        s_pos = relevance * mask_pos / stabilize(den_pos, self.stabilizer)
        s_neg = relevance * mask_neg / stabilize(den_neg, self.stabilizer)
        return x_pos * (op.transpose(s_pos, w_up, x) + op.transpose(s_neg, w_down, x)) + x_neg * (
            op.transpose(s_pos, w_down, x) + op.transpose(s_neg, w_up, x)
        )


# -- names ----------------------------------------------------------------------------------
def _alpha_beta(alpha: float, beta: float, bias: bool):
    def build(**kwargs: Any) -> AlphaBeta:
        return AlphaBeta(alpha=alpha, beta=beta, bias=bias, **kwargs)

    return build


RULES: dict[str, Any] = {
    "Z": Z,
    "ZIgnoreBias": lambda **kw: Z(bias=False, **kw),
    "Epsilon": Epsilon,
    "EpsilonIgnoreBias": lambda **kw: Epsilon(bias=False, **kw),
    "WSquare": WSquare,
    "Flat": Flat,
    "AlphaBeta": AlphaBeta,
    "AlphaBetaIgnoreBias": lambda **kw: AlphaBeta(bias=False, **kw),
    "Alpha2Beta1": _alpha_beta(2, 1, True),
    "Alpha2Beta1IgnoreBias": _alpha_beta(2, 1, False),
    "Alpha1Beta0": _alpha_beta(1, 0, True),
    "Alpha1Beta0IgnoreBias": _alpha_beta(1, 0, False),
    "ZPlus": ZPlus,
    "ZPlusFast": ZPlusFast,
    "Bounded": Bounded,
    "Gamma": Gamma,
}
_RULES_LOWER = {name.lower(): name for name in RULES}


def rule_from_name(name: str, **kwargs: Any) -> LinearRule:
    """The rule called ``name`` (iNNvestigate's names, e.g. "Epsilon", "Alpha2Beta1")."""
    key = _RULES_LOWER.get(name.replace("_", "").lower())
    if key is None:
        raise ValueError(f"unknown LRP rule {name!r}; known rules: {', '.join(RULES)}")
    return RULES[key](**kwargs)


def rule_from_config(config: dict[str, Any]) -> LinearRule:
    """Rebuild a rule from ``LinearRule.get_config()``."""
    if "rule" not in config:
        raise ValueError(f"a rule configuration needs a 'rule' key, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "rule"}
    return rule_from_name(config["rule"], **kwargs)


def as_rule(spec: Any) -> LinearRule:
    """A rule from a name, a rule object, a rule class or a ``get_config()`` dict."""
    if isinstance(spec, LinearRule):
        return spec
    if isinstance(spec, str):
        return rule_from_name(spec)
    if isinstance(spec, type) and issubclass(spec, LinearRule):
        return spec()
    if isinstance(spec, dict):
        return rule_from_config(spec)
    raise TypeError(
        f"cannot use {spec!r} as an LRP rule: give a rule name such as 'Epsilon', a rule "
        "object such as innspect.rules.lrp.Epsilon(0.1), or a rule class"
    )
