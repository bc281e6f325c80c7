"""LRP in plain NumPy for sequential networks: a reference to test against, and a text to read.

This module is independent of torch and of innspect's engine (only :func:`from_torch` and
:func:`check_forward` import torch, to export and compare a model). It follows the NumPy
network of the heatmapping.org Deep Taylor tutorial, as ported in tensorflow-lrp
(``lrp/modules.py``; REFERENCES.md B6): each layer has ``forward``, ``gradprop`` (the
transposed operation, i.e. the gradient) and ``relprop`` (the LRP rule), and a
``Network`` runs them in order and in reverse.

One module on purpose (about 700 lines): it is read top to bottom, as the tutorial is, and
the oracle's independence from the engine is easier to see when nothing of it lives
elsewhere.

Notation: ``x`` is a layer's input, ``W`` / ``b`` its weights and bias,
``z_j = sum_i x_i w_ij + b_j`` its output, ``R_j`` the relevance arriving at output ``j``.
Every rule for a linear layer is "a modified forward, a division, the transposed
operation" (Montavon et al., *Layer-wise relevance propagation: an overview*, 2019):

    z_j  = sum_i a_i rho(w_ij) (+ rho(b_j))     modified forward
    s_j  = R_j / z_j                             division
    c_i  = sum_j rho(w_ij) s_j                   transposed operation (= gradprop)
    R_i  = a_i c_i                               relevance at the input

Stabilisers are iNNvestigate's (REFERENCES.md A4), which innspect uses too:
``safe_divide(a, b) = a / (b + 1e-7 [b == 0])`` only acts at exact zeros, and the epsilon
rule divides by ``z + epsilon * sign(z)`` with ``sign(0) = +1``. (The tutorial instead adds
1e-9 everywhere; on real data the difference is ~1e-9 relative.)

Layers: :class:`Format`, :class:`Linear`, :class:`Conv2d` (stride, zero padding),
:class:`ReLU`, :class:`Tanh`, :class:`SumPool`, :class:`AvgPool`, :class:`MaxPool`,
:class:`Flatten`. Rules: ``"z"`` (LRP-0), ``"epsilon"``, ``"alphabeta"``, ``"zplus"``,
``"zb"``, ``"wsquare"``, ``"flat"``, and the tutorial's codes ``"zbab"``, ``"wwab"`` and
``"deeptaylor"`` (see :func:`rules_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from innspect.errors import InnspectError

SAFE_DIVIDE_EPSILON = 1e-7  # Keras' K.epsilon(), iNNvestigate's SafeDivide


class OracleError(InnspectError, ValueError):
    """A network the oracle cannot represent, or a rule it does not know."""


def safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` with ``b`` replaced by 1e-7 where it is exactly 0 (iNNvestigate's SafeDivide)."""
    return a / np.where(b == 0, SAFE_DIVIDE_EPSILON, b)


def sign0(z: np.ndarray) -> np.ndarray:
    """The sign of ``z`` with sign(0) = +1 (the epsilon rule's convention)."""
    return np.where(z >= 0, 1.0, -1.0)


# -- rules --------------------------------------------------------------------------------
RULE_NAMES = ("z", "epsilon", "alphabeta", "zplus", "zb", "wsquare", "flat")
_ALIASES = {
    "simple": "z",
    "lrp0": "z",
    "ab": "alphabeta",
    "alpha_beta": "alphabeta",
    "z_plus": "zplus",
    "ww": "wsquare",
    "w_square": "wsquare",
}


@dataclass(frozen=True)
class Rule:
    """An LRP rule for a linear layer (see each ``Linear._relprop_*`` for its formula).

    Parameters
    ----------
    name
        One of ``RULE_NAMES``.
    epsilon
        The epsilon rule's stabiliser.
    alpha
        Alpha-beta's alpha (beta = alpha - 1, as in the tutorial).
    low, high
        The z^B rule's bounds of the input (scalars or arrays broadcastable to it).
    bias
        Whether z, epsilon and alpha-beta count the bias in their denominators.
    """

    name: str
    epsilon: float = 1e-7
    alpha: float = 1.0
    low: Any = -1.0
    high: Any = 1.0
    bias: bool = True

    @property
    def beta(self) -> float:
        return self.alpha - 1.0


def rule(spec: Any) -> Rule | None:
    """A :class:`Rule` from a name (``"epsilon"``, ``"z_ib"``...), a tuple with parameters
    (``("epsilon", 0.1)``, ``("alphabeta", 2.0)``, ``("zb", low, high)``) or a Rule; None
    stays None (no rule: the layer is not a linear layer)."""
    if spec is None or isinstance(spec, Rule):
        return spec
    name, *params = (spec,) if isinstance(spec, str) else tuple(spec)
    if not isinstance(name, str):
        raise OracleError(f"a rule is a name or (name, parameters...), got {spec!r}")
    key = name.lower()
    bias = not key.endswith("_ib")
    key = _ALIASES.get(key.removesuffix("_ib"), key.removesuffix("_ib"))
    if key not in RULE_NAMES:
        raise OracleError(f"unknown rule {name!r}; the oracle knows {', '.join(RULE_NAMES)}")
    result = Rule(key, bias=bias)
    if key == "zplus":
        result = Rule("alphabeta", alpha=1.0, bias=False)  # z+ = alpha-beta(1, 0) without bias
    if params:
        if key == "epsilon":
            result = replace(result, epsilon=float(params[0]))
        elif key == "alphabeta":
            if float(params[0]) < 1:
                raise OracleError(
                    f"alpha-beta needs alpha >= 1 (beta = alpha - 1), got {params[0]}"
                )
            result = replace(result, alpha=float(params[0]))
        elif key == "zb" and len(params) == 2:
            result = replace(result, low=params[0], high=params[1])
        else:
            raise OracleError(f"rule {name!r} takes no parameters {params!r}")
    return result


# -- layers -------------------------------------------------------------------------------
class Layer:
    """A layer: ``forward`` keeps its input, ``gradprop`` and ``relprop`` go backwards."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        self.y = self._forward(x)
        return self.y

    def _forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def gradprop(self, dy: np.ndarray) -> np.ndarray:
        """The gradient at the input given the gradient ``dy`` at the output."""
        raise NotImplementedError

    def relprop(self, r: np.ndarray, rule: Rule | None = None) -> np.ndarray:
        """Relevance at the input: element-wise layers pass it through unchanged."""
        return r

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Format(Layer):
    """The tutorial's input mapping ``A = X (high - low) + low`` from [0, 1] to [low, high].

    Relevance passes through unchanged; the z^B rule of the next layer uses its bounds.
    """

    def __init__(self, low: float = -1.0, high: float = 1.0) -> None:
        self.low, self.high = low, high

    def _forward(self, x):
        return x * (self.high - self.low) + self.low

    def gradprop(self, dy):
        return dy * (self.high - self.low)


class ReLU(Layer):
    """``max(0, x)``; gradient ``dy [x > 0]``."""

    def _forward(self, x):
        return np.maximum(x, 0)

    def gradprop(self, dy):
        return dy * (self.x > 0)


class Tanh(Layer):
    """``tanh(x)``; gradient ``dy (1 - tanh(x)^2)``."""

    def _forward(self, x):
        return np.tanh(x)

    def gradprop(self, dy):
        return dy * (1 - self.y**2)


class Flatten(Layer):
    """Reshape to (N, features); relevance and gradient are reshaped back."""

    def _forward(self, x):
        return x.reshape(x.shape[0], -1)

    def gradprop(self, dy):
        return dy.reshape(self.x.shape)

    def relprop(self, r, rule=None):
        return r.reshape(self.x.shape)


class LinearLayer(Layer):
    """A layer ``z = f(x, W) + b`` linear in ``x``. Subclasses give ``f`` (``_apply``) and
    its transpose (``_transpose``, the gradient); every LRP rule is written once here."""

    W: np.ndarray
    B: np.ndarray | None

    def _apply(self, x: np.ndarray, W: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _transpose(self, s: np.ndarray, W: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _bias(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _forward(self, x):
        z = self._apply(x, self.W)
        return z if self.B is None else z + self._bias(z)

    def gradprop(self, dy):
        return self._transpose(dy, self.W)

    def relprop(self, r: np.ndarray, rule: Rule | None = None) -> np.ndarray:
        """Relevance at the input by ``rule`` (LRP-0 when None)."""
        rule = rule or Rule("z")
        method = getattr(self, f"_relprop_{rule.name}", None)
        if method is None:
            raise OracleError(f"{self!r} has no rule {rule.name!r}")
        return method(self.x, r.reshape(self.y.shape), rule)

    def _with_bias(self, z: np.ndarray, rule: Rule) -> np.ndarray:
        return z + self._bias(z) if rule.bias and self.B is not None else z

    def _relprop_z(self, x, r, rule):
        """LRP-0: ``R_i = x_i sum_j w_ij R_j / z_j`` with ``z_j = sum_i x_i w_ij (+ b_j)``
        (Bach et al. 2015)."""
        z = self._with_bias(self._apply(x, self.W), rule)
        return x * self._transpose(safe_divide(r, z), self.W)

    def _relprop_epsilon(self, x, r, rule):
        """LRP-epsilon: ``R_i = x_i sum_j w_ij R_j / (z_j + epsilon sign(z_j))``
        (Bach et al. 2015); sign(0) = +1."""
        z = self._with_bias(self._apply(x, self.W), rule)
        return x * self._transpose(r / (z + rule.epsilon * sign0(z)), self.W)

    def _relprop_alphabeta(self, x, r, rule):
        """LRP-alpha-beta (Bach et al. 2015), inputs split by sign as in iNNvestigate:

        ``R_i = alpha sum_j (x+_i w+_ij + x-_i w-_ij) R_j / z^A_j
              - beta sum_j (x+_i w-_ij + x-_i w+_ij) R_j / z^B_j`` with
        ``z^A_j = sum_i (x+ w+ + x- w-) (+ b_j)``, ``z^B_j = sum_i (x+ w- + x- w+) (+ b_j)``
        (iNNvestigate puts the whole bias in both), beta = alpha - 1. With alpha = 1 and no
        bias this is the z+ rule of Deep Taylor (Montavon et al. 2017).
        """
        x_pos, x_neg = np.maximum(x, 0), np.minimum(x, 0)
        w_pos, w_neg = np.maximum(self.W, 0), np.minimum(self.W, 0)

        def share(first: np.ndarray, second: np.ndarray) -> np.ndarray:
            z = self._with_bias(self._apply(x_pos, first) + self._apply(x_neg, second), rule)
            s = safe_divide(r, z)
            return x_pos * self._transpose(s, first) + x_neg * self._transpose(s, second)

        result = rule.alpha * share(w_pos, w_neg)
        if rule.beta:
            result = result - rule.beta * share(w_neg, w_pos)
        return result

    def _relprop_zb(self, x, r, rule):
        """z^B for inputs in [low, high] (Montavon et al. 2017):
        ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) R_j / z_j`` with
        ``z_j = sum_i (x_i w_ij - l_i w+_ij - h_i w-_ij)``; no bias."""
        w_pos, w_neg = np.maximum(self.W, 0), np.minimum(self.W, 0)
        low = np.broadcast_to(np.asarray(rule.low, dtype=x.dtype), x.shape)
        high = np.broadcast_to(np.asarray(rule.high, dtype=x.dtype), x.shape)
        z = self._apply(x, self.W) - self._apply(low, w_pos) - self._apply(high, w_neg)
        s = safe_divide(r, z)
        return (
            x * self._transpose(s, self.W)
            - low * self._transpose(s, w_pos)
            - high * self._transpose(s, w_neg)
        )

    def _relprop_wsquare(self, x, r, rule):
        """w^2 rule (Montavon et al. 2017): ``R_i = sum_j w_ij^2 R_j / sum_i' w_i'j^2``;
        the denominator is the squared-weight layer applied to ones (right at borders)."""
        return self._share_by_weights(x, r, self.W**2)

    def _relprop_flat(self, x, r, rule):
        """Flat rule: w^2 with every weight 1, relevance spread evenly over the field."""
        return self._share_by_weights(x, r, np.ones_like(self.W))

    def _share_by_weights(self, x, r, V):
        ones = np.ones((1,) + x.shape[1:], dtype=x.dtype)
        return self._transpose(safe_divide(r, self._apply(ones, V)), V)


class Linear(LinearLayer):
    """Fully connected ``z = x W + b`` with ``W`` of shape (in, out) (the tutorial's layout;
    torch's ``weight`` is its transpose). An input of rank > 2 is flattened first."""

    def __init__(self, W: np.ndarray, B: np.ndarray | None = None) -> None:
        self.W = np.asarray(W)
        self.B = None if B is None else np.asarray(B)

    def forward(self, x):
        self.input_shape = x.shape
        return super().forward(x.reshape(x.shape[0], -1))

    def gradprop(self, dy):
        return super().gradprop(dy).reshape(self.input_shape)

    def relprop(self, r, rule=None):
        return super().relprop(r, rule).reshape(self.input_shape)

    def _apply(self, x, W):
        return x @ W

    def _transpose(self, s, W):
        return s @ W.T

    def _bias(self, z):
        return self.B

    def __repr__(self) -> str:
        return f"Linear({self.W.shape[0]} -> {self.W.shape[1]})"


class Conv2d(LinearLayer):
    """2-D convolution on (N, C, H, W) inputs with ``W`` of shape (out, in, kh, kw) (torch's
    layout), stride and zero padding:
    ``z[n, o, p, q] = sum_{c,a,b} x_pad[n, c, p s + a, q s + b] W[o, c, a, b] + b[o]``."""

    def __init__(
        self, W: np.ndarray, B: np.ndarray | None = None, stride: int = 1, padding: int = 0
    ) -> None:
        self.W = np.asarray(W)
        self.B = None if B is None else np.asarray(B)
        self.stride, self.padding = int(stride), int(padding)

    def _patches(self, x: np.ndarray) -> np.ndarray:
        """(N, C, Ho, Wo, kh, kw) windows of the padded input (a view, no copy)."""
        p, s = self.padding, self.stride
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        kh, kw = self.W.shape[2:]
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
        return windows[:, :, ::s, ::s]

    def _apply(self, x, W):
        return np.einsum("nchwab,ocab->nohw", self._patches(x), W, optimize=True)

    def _transpose(self, s, W):
        """The gradient: every output's signal goes back to its window, weighted by W."""
        n, _, ho, wo = s.shape
        p, st = self.padding, self.stride
        kh, kw = W.shape[2:]
        h, w = self.x.shape[2] + 2 * p, self.x.shape[3] + 2 * p
        result = np.zeros((n, W.shape[1], h, w), dtype=s.dtype)
        for a in range(kh):
            for b in range(kw):
                result[:, :, a : a + st * ho : st, b : b + st * wo : st] += np.einsum(
                    "nohw,oc->nchw", s, W[:, :, a, b]
                )
        return result[:, :, p : h - p, p : w - p]

    def _bias(self, z):
        return self.B[None, :, None, None]

    def __repr__(self) -> str:
        o, c, kh, kw = self.W.shape
        return f"Conv2d({c} -> {o}, {kh}x{kw}, stride={self.stride}, padding={self.padding})"


class _Pool(Layer):
    """Non-overlapping ``size x size`` pooling with stride ``size`` (rows and columns past
    the last full window are dropped, as torch does)."""

    def __init__(self, size: int = 2) -> None:
        self.size = int(size)

    def _windows(self, x: np.ndarray) -> np.ndarray:
        k = self.size
        n, c, h, w = x.shape
        x = x[:, :, : h // k * k, : w // k * k]
        return x.reshape(n, c, h // k, k, w // k, k)

    def _spread(self, values: np.ndarray) -> np.ndarray:
        """(N, C, Ho, k, Wo, k) back to the input's shape, zeros past the windows."""
        n, c, ho, k, wo, _ = values.shape
        result = np.zeros(self.x.shape, dtype=values.dtype)
        result[:, :, : ho * k, : wo * k] = values.reshape(n, c, ho * k, wo * k)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size})"


class SumPool(_Pool):
    """``scale`` times the window sum (the tutorial's ``Pooling`` is scale 0.5). Relevance by
    the z-rule: ``R_i = x_i R_j / z_j`` (each input's share of its window's sum)."""

    def __init__(self, size: int = 2, scale: float = 1.0) -> None:
        super().__init__(size)
        self.scale = scale

    def _forward(self, x):
        return self.scale * self._windows(x).sum(axis=(3, 5))

    def gradprop(self, dy):
        shape = self._windows(self.x).shape
        return self._spread(np.broadcast_to(self.scale * dy[:, :, :, None, :, None], shape))

    def relprop(self, r, rule=None):
        return self.x * self.gradprop(safe_divide(r.reshape(self.y.shape), self.y))


class AvgPool(SumPool):
    """Average pooling (torch's ``AvgPool2d(size)``): sum pooling scaled by 1 / size^2."""

    def __init__(self, size: int = 2) -> None:
        super().__init__(size, scale=1.0 / size**2)


class MaxPool(_Pool):
    """Max pooling; gradient and relevance go to each window's (first) maximum."""

    def _forward(self, x):
        return self._windows(x).max(axis=(3, 5))

    def gradprop(self, dy):
        windows = self._windows(self.x)
        n, c, ho, k, wo, _ = windows.shape
        flat = windows.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, k * k)
        mask = np.zeros_like(flat)
        np.put_along_axis(mask, flat.argmax(axis=-1)[..., None], 1.0, axis=-1)
        mask = mask.reshape(n, c, ho, wo, k, k).transpose(0, 1, 2, 4, 3, 5)
        return self._spread(mask * dy[:, :, :, None, :, None])

    def relprop(self, r, rule=None):
        return self.gradprop(r.reshape(self.y.shape))


# -- the network --------------------------------------------------------------------------
@dataclass
class LayerwiseRelevance:
    """What :meth:`Network.layerwise_lrp` returns.

    Attributes
    ----------
    relevances
        ``[R at the input of layer 0, ..., R at the input of the last layer, R at the output]``.
    conservation
        Per layer, per sample ``|sum R_in / sum R_out - 1|`` (0 = exactly conserved).
    """

    relevances: list[np.ndarray]
    conservation: list[np.ndarray]


class Network:
    """A sequential network of oracle layers."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def gradprop(self, dy: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.gradprop(dy)
        return dy

    def relprop(self, r: np.ndarray, rules: Any = "z") -> np.ndarray:
        """Relevance at the input, after ``forward``; see :func:`rules_for` for ``rules``."""
        per_layer = rules_for(self.layers, rules)
        for layer, layer_rule in zip(reversed(self.layers), reversed(per_layer), strict=True):
            r = layer.relprop(r, layer_rule)
        return r

    def layerwise_lrp(
        self, x: np.ndarray, class_filter: Any, rules: Any = "z"
    ) -> LayerwiseRelevance:
        """Run forward, start from ``R = y * class_filter`` and propagate layer by layer.

        Parameters
        ----------
        class_filter
            A one-hot (or any broadcastable) array like the output, or class indices (one
            int or one per sample). With ``rules="deeptaylor"`` the start is ``max(0, R)``.
        rules
            See :func:`rules_for`.
        """
        y = self.forward(x)
        start = y * _as_filter(class_filter, y)
        if isinstance(rules, str) and rules.lower() == "deeptaylor":
            start = np.maximum(start, 0)
        per_layer = rules_for(self.layers, rules)
        relevances = [start]
        conservation = []
        r = start
        for layer, layer_rule in zip(reversed(self.layers), reversed(per_layer), strict=True):
            r_in = layer.relprop(r, layer_rule)
            out_sum = r.reshape(r.shape[0], -1).sum(axis=1)
            in_sum = r_in.reshape(r_in.shape[0], -1).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                conservation.append(np.abs(in_sum / out_sum - 1))
            relevances.insert(0, r_in)
            r = r_in
        conservation.reverse()
        return LayerwiseRelevance(relevances, conservation)

    def __repr__(self) -> str:
        return "Network([" + ", ".join(map(repr, self.layers)) + "])"


def _as_filter(class_filter: Any, y: np.ndarray) -> np.ndarray:
    mask = np.asarray(class_filter)
    if mask.dtype.kind in "iu" and mask.ndim <= 1 and y.ndim == 2:
        indices = np.broadcast_to(mask, (y.shape[0],))
        if (indices < 0).any() or (indices >= y.shape[1]).any():
            raise OracleError(f"class index out of range 0..{y.shape[1] - 1}: {mask}")
        onehot = np.zeros_like(y)
        onehot[np.arange(y.shape[0]), indices] = 1
        return onehot
    return mask


def _bounds(layers: Sequence[Layer]) -> tuple[float, float]:
    formats = [layer for layer in layers if isinstance(layer, Format)]
    return (formats[0].low, formats[0].high) if formats else (-1.0, 1.0)


def rules_for(layers: Sequence[Layer], rules: Any) -> list[Rule | None]:
    """One rule per layer (None for layers that are not linear).

    ``rules`` is one of:

    - a rule (see :func:`rule`), used for every linear layer;
    - a list with one entry per layer, as in tensorflow-lrp (entries of non-linear layers
      are ignored);
    - a code: ``"zbab"`` = z^B on the first linear layer, alpha-beta (alpha 2) above;
      ``"wwab"`` = w^2 first, alpha-beta (alpha 2) above; ``"deeptaylor"`` = z^B first,
      z+ above, starting from ``max(0, y)``. The z^B bounds are those of a :class:`Format`
      layer if the network has one, else [-1, 1] (tensorflow-lrp always used its global
      -1 / +1). Pooling keeps its own rule, as in the tutorial: average pooling shares by
      the z-rule, where innspect's ``deep_taylor`` (following iNNvestigate's data) takes the
      gradient; the two agree on networks without average pooling.
    """
    linear = [i for i, layer in enumerate(layers) if isinstance(layer, LinearLayer)]
    if isinstance(rules, str) and rules.lower() in ("zbab", "wwab", "deeptaylor"):
        code = rules.lower()
        low, high = _bounds(layers)
        first = Rule("zb", low=low, high=high) if code != "wwab" else Rule("wsquare")
        above = Rule("alphabeta", alpha=2.0) if code != "deeptaylor" else rule("zplus")
        return [
            (first if i == linear[0] else above) if i in linear else None
            for i in range(len(layers))
        ]
    if isinstance(rules, list):
        if len(rules) != len(layers):
            raise OracleError(
                f"a list of rules needs one entry per layer ({len(layers)}), got {len(rules)}"
            )
        return [rule(r) if i in linear else None for i, r in enumerate(rules)]
    single = rule(rules)
    return [single if i in linear else None for i in range(len(layers))]


def conservation_check(heatmaps: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Per sample ``|sum_i heatmap_i - R_n|`` (tensorflow-lrp's check).

    ``R`` is the relevance each sample started from: (N,), or (N, classes) which is summed
    over classes (e.g. ``y * onehot``).
    """
    h = np.asarray(heatmaps).reshape(len(heatmaps), -1).sum(axis=1)
    total = np.asarray(R).reshape(len(heatmaps), -1).sum(axis=1)
    return np.abs(h - total)


# -- torch export -------------------------------------------------------------------------
def from_torch(model: Any) -> Network:
    """The oracle network of a ``torch.nn.Sequential`` (nested Sequentials are flattened).

    Known layers: Linear, Conv2d (square stride, zero padding, no dilation or groups),
    ReLU, Tanh, AvgPool2d / MaxPool2d (kernel = stride, no padding), Flatten. Anything else
    raises :class:`OracleError` naming the layer.
    """
    from torch import nn

    if not isinstance(model, nn.Sequential):
        raise OracleError(
            f"from_torch needs a torch.nn.Sequential, got {type(model).__name__}; the oracle "
            "only knows sequential networks"
        )
    layers: list[Layer] = []
    for name, module in _leaves(model, ""):
        layers.append(_export(name, module))
    return Network(layers)


def _leaves(model: Any, prefix: str) -> list[tuple[str, Any]]:
    from torch import nn

    result = []
    for name, module in model.named_children():
        full = f"{prefix}{name}"
        if isinstance(module, nn.Sequential):
            result.extend(_leaves(module, full + "."))
        else:
            result.append((full, module))
    return result


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _export(name: str, module: Any) -> Layer:
    from torch import nn

    def refuse(why: str) -> OracleError:
        return OracleError(f"layer '{name}' ({module!r}): {why}")

    if isinstance(module, nn.Linear):
        bias = None if module.bias is None else _numpy(module.bias)
        return Linear(_numpy(module.weight).T.copy(), bias)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.dilation != (1, 1):
            raise refuse("the oracle's Conv2d has no groups or dilation")
        if len(set(module.stride)) != 1 or not isinstance(module.padding, tuple):
            raise refuse("the oracle's Conv2d needs a square stride and numeric padding")
        if len(set(module.padding)) != 1 or module.padding_mode != "zeros":
            raise refuse("the oracle's Conv2d needs equal zero padding on both axes")
        bias = None if module.bias is None else _numpy(module.bias)
        return Conv2d(_numpy(module.weight), bias, module.stride[0], module.padding[0])
    if type(module) is nn.ReLU:
        return ReLU()
    if type(module) is nn.Tanh:
        return Tanh()
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise refuse("only Flatten(1, -1) is known")
        return Flatten()
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        size = module.kernel_size
        stride = module.stride
        if isinstance(size, tuple):
            size = size[0] if len(set(size)) == 1 else None
        if isinstance(stride, tuple):
            stride = stride[0] if len(set(stride)) == 1 else None
        if size is None or stride not in (size, None) or module.padding not in (0, (0, 0)):
            raise refuse("only square pooling with stride = kernel and no padding is known")
        if isinstance(module, nn.MaxPool2d) and (module.dilation not in (1, (1, 1))):
            raise refuse("dilated max pooling is not known")
        if getattr(module, "ceil_mode", False):
            raise refuse("ceil_mode pooling is not known")
        return AvgPool(size) if isinstance(module, nn.AvgPool2d) else MaxPool(size)
    raise refuse(
        "the oracle knows Linear, Conv2d, ReLU, Tanh, AvgPool2d, MaxPool2d and Flatten only"
    )


def check_forward(model: Any, X: np.ndarray, atol: float = 1e-5) -> list[float]:
    """Compare the oracle's layers with the torch model's, layer by layer.

    Each oracle layer gets the *torch* activation at its input (so errors do not
    accumulate, as tensorflow-lrp's first ``Network.test`` did) and its output is compared
    with torch's by max abs error. Returns the errors per layer; raises
    :class:`OracleError` naming the first layer whose error exceeds ``atol``.
    """
    import torch

    network = from_torch(model)
    modules = [module for _, module in _leaves(model, "")]
    names = [name for name, _ in _leaves(model, "")]
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float64
    activation = torch.as_tensor(np.asarray(X), dtype=dtype)
    errors = []
    with torch.no_grad():
        for name, module, layer in zip(names, modules, network.layers, strict=True):
            expected = module(activation)
            got = layer.forward(activation.double().numpy())
            error = float(np.abs(got - expected.double().numpy()).max())
            if error > atol:
                raise OracleError(
                    f"layer '{name}' ({type(module).__name__}): oracle and torch differ by "
                    f"{error:.3g} > atol={atol:g}"
                )
            errors.append(error)
            activation = expected
    return errors
