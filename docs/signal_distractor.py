"""Make docs/images/signal_distractor.png: gradient vs pattern vs PatternNet on the toy
signal/distractor data of Kindermans et al. 2018 (arXiv 1705.05598, figure 2).

Data ``x = a_s s + a_d d`` (signal ``s``, distractor ``d``); the linear model ``w`` with
``w^T x = s`` must cancel the distractor, so it points away from the signal direction. The
gradient is ``w``; the linear pattern learned by ``PatternComputer`` is ``a_s``, and
PatternNet's output for each sample is its signal component ``a_s s``.

Run: ``PYTHONPATH=src python docs/signal_distractor.py`` (a second, no download).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import innspect  # noqa: E402
from innspect.patterns import PatternComputer  # noqa: E402
from innspect.util.files import atomic_path  # noqa: E402

OUT = Path(__file__).resolve().parent / "images" / "signal_distractor.png"


def main() -> Path:
    rng = np.random.default_rng(0)
    a_s, a_d = np.array([1.0, 0.0]), np.array([1.0, 1.0])
    s, d = rng.standard_normal(400), rng.standard_normal(400)
    d -= d.mean() + (s - s.mean()) * np.cov(s, d)[0, 1] / s.var(ddof=1)  # uncorrelated, as assumed
    x = np.outer(s, a_s) + np.outer(d, a_d)
    w = np.array([1.0, -1.0])  # w^T a_s = 1, w^T a_d = 0: the model output is s
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(w)[None])

    gradient = innspect.create_analyzer("gradient", model).analyze(x[:1])[0]
    patterns = PatternComputer(model, "linear").compute(x)
    (pattern,) = (p[0] for p in patterns.values())
    net = innspect.create_analyzer(
        "pattern.net", model, patterns=patterns, reverse_project_bottleneck_layers=False
    )
    # The walk starts from the output's value y = s: the output is a * s.
    signal = net.analyze(x)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), sharex=True, sharey=True)
    titles = ("gradient = w", "pattern a (PatternComputer)", "PatternNet output = a_s s")
    for ax, title in zip(axes, titles, strict=True):
        ax.scatter(x[:, 0], x[:, 1], s=4, c="0.75", label="data x = a_s s + a_d d")
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.axhline(0, c="0.9", lw=0.5, zorder=0)
        ax.axvline(0, c="0.9", lw=0.5, zorder=0)
    arrow = {"width": 0.05, "length_includes_head": True, "zorder": 3}
    axes[0].arrow(0, 0, *(2 * gradient), color="tab:blue", **arrow)
    axes[0].arrow(0, 0, *(2 * a_d), color="tab:red", alpha=0.5, **arrow)
    axes[0].text(*(2 * a_d + 0.1), "distractor a_d", color="tab:red")
    axes[1].arrow(0, 0, *(2 * pattern), color="tab:green", **arrow)
    axes[1].arrow(0, 0, *(2 * a_s), color="k", alpha=0.3, width=0.12, zorder=2)
    axes[1].text(0.2, -0.6, f"a = ({pattern[0]:.2f}, {pattern[1]:.2f})", color="tab:green")
    axes[2].scatter(signal[:, 0], signal[:, 1], s=4, c="tab:green", label="PatternNet")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Signal / distractor (Kindermans et al. 2018): the gradient cancels the "
                 "distractor, the pattern finds the signal")  # fmt: skip
    fig.tight_layout()
    with atomic_path(OUT) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print(main())
