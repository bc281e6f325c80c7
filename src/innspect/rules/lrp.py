"""LRP rules for linear layers (Linear, ConvNd, ConvTransposeNd, unfused BatchNorm): Z,
Epsilon, WSquare, Flat, AlphaBeta, ZPlus, ZPlusFast, Bounded (z^B) and Gamma, each a
``LinearRule`` (``rules/linear_rule.py``), and the names they go by.

Rules that only need the layer's own ``z`` reuse the recorded output, so they cost one
transposed operation and no extra forward (Bach et al. 2015, PLoS ONE 10(7): e0130140;
z+, w^2 and z^B: Montavon et al. 2017, Pattern Recognition 65; Gamma: Montavon et al.
2019, in Explainable AI, LNCS 11700).
"""

from __future__ import annotations

from typing import Any

import torch

from innspect.engine.reverse import NodeContext
from innspect.graph.linear_ops import LinearOp
from innspect.rules.linear_rule import (
    LinearRule,
    bias_term,
    check_stabilizer,
    difference,
    divide_by_stabilized,
    divide_into,
    negative_part,
    positive_part,
    signed_shift,
    stabilize,
    without_bias,
)
from innspect.util.checks import check_number


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
        return stabilize(z if self.bias else without_bias(op, z), self.stabilizer)

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
        # inf would zero every relevance and NaN would poison it: finite and > 0 (the Z rule
        # is the unstabilised division).
        epsilon = check_number("epsilon", epsilon, positive=True)
        super().__init__(bias=bias)
        self.epsilon = epsilon

    def _denominator(self, op: LinearOp, z: torch.Tensor) -> torch.Tensor:
        return signed_shift(z if self.bias else without_bias(op, z), self.epsilon)


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
    alpha = None if alpha is None else check_number("alpha", alpha)
    beta = None if beta is None else check_number("beta", beta)
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
            return positive_part(b), positive_part(b)  # b - b- = b+
        return b, None

    def _hints(self, ctx: NodeContext) -> dict[str, Any]:
        return {"nonnegative": ctx.input_nonnegative or None}

    def relevance(self, op, x, z, relevance, nonnegative: bool | None = None):
        # Written for memory and passes: every full-size temporary is computed in place,
        # freed or reused as soon as it is spent (on the first layers of an image network
        # each one is tens of MB).
        weight = op.weight.detach()
        w_pos = positive_part(weight)
        # W- only when a term uses it: for a dense layer of VGG each copy is 400 MB.
        w_neg = negative_part(weight) if self.beta or not nonnegative else None
        if nonnegative is None:
            nonnegative = not bool((x < 0).any())
        x_pos = x if nonnegative else positive_part(x)
        x_neg = None if nonnegative else negative_part(x)
        if w_neg is None and x_neg is not None:
            w_neg = negative_part(weight)
        bias_act, inhibitor_loses = self._bias_vectors(op)
        # The activator's bias goes into the forward (free in a convolution kernel).
        act = op.forward(x_pos, w_pos, bias_act)  # x+ W+ + b_act
        if x_neg is not None:
            act += op.forward(x_neg, w_neg, None)  # + x- W-
        inhibitor = None
        if self.beta:
            inhibitor = torch.sub(z, act)  # z - act - b_inh_loses, with act's bias put back
            correction = difference(bias_act, inhibitor_loses)
            if correction is not None:
                inhibitor += bias_term(op, z, correction)
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
        w_pos = positive_part(op.weight.detach())
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
        w_pos, w_neg = positive_part(weight), negative_part(weight)
        low, high = _bound_tensor(self.low, x, "low"), _bound_tensor(self.high, x, "high")
        # x W comes from the recorded z; only the two bound terms need a forward.
        denominator = (
            without_bias(op, z) - op.forward(low, w_pos, None) - op.forward(high, w_neg, None)
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
        self.gamma = check_number("gamma", gamma, minimum=0.0)
        self.bias = bool(bias)
        self.stabilizer = check_stabilizer(stabilizer)
        self.generalized = bool(generalized)

    def _biases(self, op: LinearOp) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.bias or op.bias is None:
            return None, None
        b = op.bias.detach()
        return b + self.gamma * positive_part(b), b + self.gamma * negative_part(b)

    def relevance(self, op, x, z, relevance):
        weight = op.weight.detach()
        w_up = weight + self.gamma * positive_part(weight)
        b_up, b_down = self._biases(op)
        if not self.generalized:
            s = relevance / stabilize(op.forward(x, w_up, b_up), self.stabilizer)
            return x * op.transpose(s, w_up, x)
        w_down = weight + self.gamma * negative_part(weight)
        mask_pos = (z > 0).to(z.dtype)
        mask_neg = (z < 0).to(z.dtype)
        if not bool((x < 0).any()):
            den_pos = op.forward(x, w_up, b_up)
            den_neg = op.forward(x, w_down, b_down)
            s_pos = relevance * mask_pos / stabilize(den_pos, self.stabilizer)
            s_neg = relevance * mask_neg / stabilize(den_neg, self.stabilizer)
            return x * (op.transpose(s_pos, w_up, x) + op.transpose(s_neg, w_down, x))
        x_pos, x_neg = positive_part(x), negative_part(x)
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
