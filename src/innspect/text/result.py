"""The explanation of a generation (``TokenAttribution``) or of a text classifier's classes
(``ClassAttribution``) and their displays: a matrix figure, a page and shaded terminal text."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Positive evidence red, negative blue (the "seismic" colours of innspect's figures).
_POSITIVE = (200, 30, 30)
_NEGATIVE = (30, 70, 200)


@dataclass
class TokenAttribution:
    """Every generated token explained against its context.

    Attributes
    ----------
    sequence_ids
        Prompt and continuation, shape ``(1, P + G)``. For an encoder-decoder model (T5,
        BART) the "prompt" is the encoder's ``S`` tokens followed by the decoder's start token
        (``P = S + 1``): shape ``(1, S + 1 + G)``.
    generated_ids
        The continuation, shape ``(G,)``.
    matrix
        ``(G, P + G)``: row ``k`` explains generated token ``k`` (predicted at position
        ``P + k - 1``), one value per token; zero at positions ``>= P + k``. Encoder-decoder:
        columns ``0 .. S - 1`` are the encoder's tokens, column ``S`` the decoder's start
        token and ``S + 1 + j`` generated token ``j``; row ``k`` (decoder position ``k``)
        reads the encoder's tokens and the decoder's ``0 .. k`` (columns ``< S + 1 + k``).
    scores
        Per step, the explained value (the logit, a log-probability or a contrast).
    method, score
        The method and what each step explains ("logit" or "log_prob").
    targets, contrasts
        Per step, the explained token id and the token it is contrasted with (or None).
    tokens
        Each token of the sequence as text, when a tokenizer was given.
    hidden
        Per position, whether the token is hidden from the displays (``skip_tokens``).
    source_length
        How many of the first columns are an encoder's input tokens (``S``); 0 for a
        decoder-only model.
    """

    sequence_ids: torch.Tensor
    generated_ids: torch.Tensor
    matrix: torch.Tensor
    scores: torch.Tensor
    method: str
    score: str
    targets: torch.Tensor
    contrasts: torch.Tensor | None
    tokens: list[str] | None
    hidden: torch.Tensor
    source_length: int = 0

    @property
    def prompt_length(self) -> int:
        return self.sequence_ids.shape[1] - self.generated_ids.numel()

    def labels(self) -> list[str]:
        """The tokens as text (their ids in brackets without a tokenizer)."""
        if self.tokens is not None:
            return list(self.tokens)
        return [f"[{int(i)}]" for i in self.sequence_ids[0].tolist()]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``results.json`` of ``innspect text``)."""
        return {
            "method": self.method,
            "score": self.score,
            "prompt_length": self.prompt_length,
            "source_length": self.source_length,
            "sequence_ids": self.sequence_ids[0].tolist(),
            "generated_ids": self.generated_ids.tolist(),
            "tokens": self.labels(),
            "hidden": self.hidden.tolist(),
            "targets": self.targets.tolist(),
            "contrasts": None if self.contrasts is None else self.contrasts.tolist(),
            "scores": self.scores.tolist(),
            "matrix": self.matrix.tolist(),
        }

    def plot(self, *, normalise: str = "row") -> Any:
        """A matplotlib Figure of the matrix: generated tokens down, context across.

        ``normalise="row"`` scales each row by its largest absolute value (steps differ in
        scale); ``"none"`` shows the values on one symmetric scale.
        """
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        if normalise not in ("row", "none"):
            raise ValueError(f"normalise must be 'row' or 'none', got {normalise!r}")
        values = self.matrix.double().numpy().copy()
        steps, length = values.shape
        # Tokens a step never reads (its own and later ones) in grey, not as zeros.
        future = np.arange(length)[None, :] >= self.prompt_length + np.arange(steps)[:, None]
        values[future] = np.nan
        shown = ~self.hidden.numpy()
        values = values[:, shown]
        if normalise == "row":
            values = values / _limits(values)[:, None]
            limit = 1.0
        else:
            limit = float(_limits(values[None].reshape(1, -1))[0])
        labels = [text for text, keep in zip(self.labels(), shown, strict=True) if keep]
        rows = self.labels()[self.prompt_length :]
        width = min(4 + 0.28 * len(labels), 40)
        height = min(2 + 0.28 * len(rows), 40)
        figure = Figure(figsize=(width, height))
        axes = figure.add_subplot()
        cmap = colormaps["seismic"].with_extremes(bad="#e8e8e8")
        image = axes.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
        # The prompt ends here.
        axes.axvline(int(shown[: self.prompt_length].sum()) - 0.5, color="black", lw=0.8)
        if self.source_length:  # the encoder's tokens end here (then the decoder's)
            axes.axvline(int(shown[: self.source_length].sum()) - 0.5, color="black", lw=1.6)
        return _labelled(
            image, labels, rows, ("context token", "generated token"),
            f"{self.method}: each generated token against its context",
        )  # fmt: skip

    def to_html(self, title: str = "innspect: explaining generated text") -> str:
        """A self-contained page: hovering (or focusing) a generated token shades its context,
        red for evidence for the explained token, blue against, by the row's largest value."""
        shown = [not h for h in self.hidden.tolist()]
        data = {
            "tokens": self.labels(),
            "shown": shown,
            "prompt": self.prompt_length,
            "source": self.source_length,
            "matrix": [[round(float(v), 8) for v in row] for row in self.matrix.tolist()],
            "scores": [float(s) for s in self.scores.tolist()],
        }
        payload = json.dumps(data).replace("</", "<\\/")
        return _PAGE.format(
            title=html.escape(title),
            method=html.escape(self.method),
            score=html.escape(self.score),
            payload=payload,
            positive="rgba({},{},{},".format(*_POSITIVE),
            negative="rgba({},{},{},".format(*_NEGATIVE),
        )

    def to_terminal(self, *, colour: bool) -> str:
        """The generated text, then each generated token with its context shaded (ANSI
        background colours when ``colour``; else the three strongest context tokens)."""
        labels = self.labels()
        shown = [not h for h in self.hidden.tolist()]
        prompt = self.prompt_length
        text = [label if keep else "" for label, keep in zip(labels, shown, strict=True)]
        source = self.source_length
        lines = [
            "".join(text[:source])
            + (" => " if source else "")
            + "".join(text[source:prompt])
            + "|"
            + "".join(text[prompt:]),
            "",
        ]
        for k in range(self.generated_ids.numel()):
            row = self.matrix[k].double().numpy()
            limit = float(_limits(row[None])[0])
            context = [i for i in range(prompt + k) if shown[i]]
            head = f"{k:3d} {labels[prompt + k]!r} ({self.scores[k]:+.3g}): "
            if colour:
                lines.append(head + "".join(_ansi(labels[i], row[i] / limit) for i in context))
            else:
                strongest = sorted(context, key=lambda i: -abs(row[i]))[:3]
                lines.append(head + ", ".join(f"{labels[i]!r} {row[i]:+.3g}" for i in strongest))
        return "\n".join(lines)


@dataclass
class ClassAttribution:
    """A text classifier's classes explained against the tokens of its input.

    Attributes
    ----------
    input_ids
        The text, shape ``(1, L)``.
    classes
        The explained classes, shape ``(K,)``: one row of ``matrix`` each.
    contrasts
        Per row, the class it is contrasted with (the score is the difference), or None.
    class_names
        Every class's name (``config.id2label``, else ``class k``).
    matrix
        ``(K, L)``: the contribution of each token to each explained score.
    scores
        Per row, the explained value (the class's logit, or the contrast).
    method
        The method.
    tokens
        Each token as text, when a tokenizer was given.
    hidden
        Per position, whether the token is hidden from the displays (``skip_tokens``).
    """

    input_ids: torch.Tensor
    classes: torch.Tensor
    contrasts: torch.Tensor | None
    class_names: list[str]
    matrix: torch.Tensor
    scores: torch.Tensor
    method: str
    tokens: list[str] | None
    hidden: torch.Tensor

    def labels(self) -> list[str]:
        """The tokens as text (their ids in brackets without a tokenizer)."""
        if self.tokens is not None:
            return list(self.tokens)
        return [f"[{int(i)}]" for i in self.input_ids[0].tolist()]

    def row_names(self) -> list[str]:
        """Each row's explained score in words: ``positive`` or ``positive - negative``."""
        names = [self.class_names[int(k)] for k in self.classes]
        if self.contrasts is None:
            return names
        return [
            f"{a} - {self.class_names[int(b)]}" for a, b in zip(names, self.contrasts, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``results.json`` of ``innspect text``)."""
        return {
            "method": self.method,
            "input_ids": self.input_ids[0].tolist(),
            "tokens": self.labels(),
            "hidden": self.hidden.tolist(),
            "classes": self.classes.tolist(),
            "contrasts": None if self.contrasts is None else self.contrasts.tolist(),
            "class_names": list(self.class_names),
            "scores": self.scores.tolist(),
            "matrix": self.matrix.tolist(),
        }

    def _shown(self) -> tuple[np.ndarray, list[str]]:
        shown = ~self.hidden.numpy()
        labels = [t for t, keep in zip(self.labels(), shown, strict=True) if keep]
        return self.matrix.double().numpy()[:, shown], labels

    def plot(self) -> Any:
        """A matplotlib Figure: explained classes down, tokens across, each row scaled by its
        largest absolute value."""
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        values, labels = self._shown()
        values = values / _limits(values)[:, None]
        rows = self.row_names()
        figure = Figure(figsize=(min(4 + 0.28 * len(labels), 40), min(2 + 0.4 * len(rows), 40)))
        axes = figure.add_subplot()
        image = axes.imshow(values, cmap=colormaps["seismic"], vmin=-1, vmax=1, aspect="auto")
        return _labelled(
            image, labels, rows, ("token", "explained class"),
            f"{self.method}: each class against the text's tokens", row_width=20,
        )  # fmt: skip

    def to_html(self, title: str = "innspect: explaining a text classifier") -> str:
        """A self-contained page: per explained class, the text with each token shaded, red
        for evidence for the class, blue against, by the row's largest value."""
        values, labels = self._shown()
        limits = _limits(values)
        blocks = []
        for k, name in enumerate(self.row_names()):
            spans = "".join(
                f'<span style="background:{_css(v / limits[k])}">{html.escape(t)}</span>'
                for t, v in zip(labels, values[k], strict=True)
            )
            blocks.append(
                f"<h2>{html.escape(name)} (score {float(self.scores[k]):.4g})</h2>"
                f'<p class="text">{spans}</p>'
            )
        return _CLASS_PAGE.format(
            title=html.escape(title), method=html.escape(self.method), blocks="\n".join(blocks)
        )

    def to_terminal(self, *, colour: bool) -> str:
        """Per explained class, the text with its tokens shaded (ANSI background colours when
        ``colour``; else the three strongest tokens)."""
        values, labels = self._shown()
        limits = _limits(values)
        lines = ["".join(labels), ""]
        for k, name in enumerate(self.row_names()):
            head = f"{name} ({float(self.scores[k]):+.3g}): "
            row = values[k]
            if colour:
                shaded = (_ansi(t, v / limits[k]) for t, v in zip(labels, row, strict=True))
                lines.append(head + "".join(shaded))
            else:
                strongest = sorted(range(len(labels)), key=lambda i: -abs(row[i]))[:3]
                lines.append(head + ", ".join(f"{labels[i]!r} {row[i]:+.3g}" for i in strongest))
        return "\n".join(lines)


def _css(value: float) -> str:
    """A background colour for ``value`` in [-1, 1]."""
    red, green, blue = _POSITIVE if value >= 0 else _NEGATIVE
    return f"rgba({red},{green},{blue},{min(abs(value), 1.0):.3f})"


def _limits(values: np.ndarray) -> np.ndarray:
    """Per row, the largest absolute finite value (1 for a row of zeros)."""
    limits = np.nan_to_num(np.abs(values)).max(axis=1) if values.size else np.ones(len(values))
    return np.where(limits > 0, limits, 1.0)


def _labelled(
    image: Any,
    columns: list[str],
    rows: list[str],
    axis_names: tuple[str, str],
    title: str,
    row_width: int = 12,
) -> Any:
    """The matplotlib figure of ``image`` (an ``imshow`` on its axes) with its tokens on the
    columns, ``rows`` on the rows, axis names, title and colour bar."""
    axes, figure = image.axes, image.axes.figure
    axes.set_xticks(range(len(columns)), [_short(t) for t in columns], rotation=90, fontsize=7)
    axes.set_yticks(range(len(rows)), [_short(t, row_width) for t in rows], fontsize=7)
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.03)
    figure.tight_layout()
    return figure


def _short(text: str, width: int = 12) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _ansi(text: str, value: float) -> str:
    """``text`` on a background shaded by ``value`` in [-1, 1] (24-bit ANSI colours)."""
    red, green, blue = _POSITIVE if value >= 0 else _NEGATIVE
    alpha = min(abs(value), 1.0)
    mix = [round(255 * (1 - alpha) + c * alpha) for c in (red, green, blue)]
    return f"\x1b[48;2;{mix[0]};{mix[1]};{mix[2]}m\x1b[38;2;0;0;0m{text}\x1b[0m"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }}
#text {{ font-family: ui-monospace, monospace; line-height: 2; white-space: pre-wrap; }}
#text span {{ padding: 0.1em 0; border-radius: 3px; }}
#text span.gen {{ cursor: pointer; text-decoration: underline dotted; }}
#text span.current {{ outline: 2px solid #222; }}
#text span.prompt-end {{ border-right: 2px solid #888; }}
#text span.source-end {{ border-right: 4px double #444; margin-right: 0.5em; }}
#info {{ color: #444; min-height: 1.5em; }}
</style></head><body>
<h1>{title}</h1>
<p>Method <b>{method}</b>, explaining each generated token's {score}. Hover a generated
(underlined) token: its context is shaded, <span style="color:{positive}1)">red</span> for
evidence for it, <span style="color:{negative}1)">blue</span> against, scaled by the row's
largest value.</p>
<div id="text"></div>
<p id="info"></p>
<script id="data" type="application/json">{payload}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const box = document.getElementById("text");
const spans = data.tokens.map((token, i) => {{
  const span = document.createElement("span");
  span.textContent = token;
  span.dataset.index = i;
  if (!data.shown[i]) span.hidden = true;
  if (i === data.prompt - 1) span.classList.add("prompt-end");
  if (i === data.source - 1) span.classList.add("source-end");
  if (i >= data.prompt) {{
    span.classList.add("gen");
    span.tabIndex = 0;
    span.dataset.step = i - data.prompt;
    span.addEventListener("mouseenter", () => show(i - data.prompt));
    span.addEventListener("focus", () => show(i - data.prompt));
  }}
  box.appendChild(span);
  return span;
}});
function show(step) {{
  const row = data.matrix[step];
  const limit = Math.max(...row.map(Math.abs)) || 1;
  spans.forEach((span, i) => {{
    span.classList.toggle("current", i === data.prompt + step);
    const v = i < data.prompt + step ? row[i] / limit : 0;
    span.style.backgroundColor = v === 0 ? "" :
      (v > 0 ? "{positive}" : "{negative}") + Math.abs(v).toFixed(3) + ")";
  }});
  document.getElementById("info").textContent =
    "token " + step + " " + JSON.stringify(data.tokens[data.prompt + step]) +
    ": score " + data.scores[step].toPrecision(4);
}}
</script>
</body></html>
"""


_CLASS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }}
.text {{ font-family: ui-monospace, monospace; line-height: 2; white-space: pre-wrap; }}
.text span {{ padding: 0.1em 0; border-radius: 3px; }}
</style></head><body>
<h1>{title}</h1>
<p>Method <b>{method}</b>. Per explained class, each token of the text is shaded red for
evidence for the class, blue against, scaled by the row's largest value.</p>
{blocks}
</body></html>
"""
