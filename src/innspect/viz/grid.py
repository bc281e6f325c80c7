"""``plot_grid``: a method-by-image comparison figure (rows images, columns methods)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from innspect.viz.arrays import as_numpy  # noqa: E402
from innspect.viz.files import save_figure  # noqa: E402


@dataclass(frozen=True)
class GridLayout:
    """Sizes of a grid figure in pixels (the figure is exactly ``width`` x ``height``).

    Attributes
    ----------
    cell
        Side of one image cell.
    label_width
        Width of the row-label column at the left.
    header
        Height of the column-label band above each block of columns.
    dpi
        Resolution; sizes in inches are pixels / dpi.
    """

    cell: int = 96
    label_width: int = 110
    header: int = 64
    dpi: int = 100

    def blocks(
        self, n_columns: int, max_columns: int | None = None, fixed_columns: int = 0
    ) -> list[list[int]]:
        """Column indices of each stacked block.

        One block unless ``max_columns`` splits the columns into blocks of nearly equal width;
        the first ``fixed_columns`` columns start every block.
        """
        fixed = list(range(min(fixed_columns, n_columns)))
        rest = list(range(len(fixed), n_columns))
        room = (max_columns or n_columns) - len(fixed)
        if not rest or room < 1 or len(rest) <= room:
            return [fixed + rest]
        n_blocks = -(-len(rest) // room)
        per_block = -(-len(rest) // n_blocks)
        return [fixed + rest[s : s + per_block] for s in range(0, len(rest), per_block)]

    def arrange(
        self,
        n_columns: int,
        max_columns: int | None = None,
        fixed_columns: int = 0,
        column_groups: Sequence[tuple[str, Sequence[int]]] | None = None,
    ) -> list[list[tuple[str | None, list[int]]]]:
        """The stacked blocks, each a list of (group title, column indices) segments.

        Without ``column_groups`` this is :meth:`blocks` with untitled segments. With them,
        groups are packed in order into blocks of at most ``max_columns`` columns (the first
        ``fixed_columns`` start every block, untitled); a group that fits in no block is split
        into near-equal parts, its title repeated with "(continued)".
        """
        if column_groups is None:
            return [[(None, b)] for b in self.blocks(n_columns, max_columns, fixed_columns)]
        fixed = list(range(min(fixed_columns, n_columns)))
        room = max(1, (max_columns or n_columns) - len(fixed))
        blocks: list[list[tuple[str | None, list[int]]]] = []
        used = room  # forces a new block for the first group
        for title, columns in column_groups:
            columns = list(columns)
            if len(columns) > room:
                n_parts = -(-len(columns) // room)
                per_part = -(-len(columns) // n_parts)
                parts = [columns[s : s + per_part] for s in range(0, len(columns), per_part)]
            else:
                parts = [columns]
            for index, part in enumerate(parts):
                label = title if index == 0 else f"{title} (continued)"
                if used + len(part) > room:
                    blocks.append([(None, fixed)] if fixed else [])
                    used = 0
                blocks[-1].append((label, part))
                used += len(part)
        return blocks

    def size(
        self,
        n_rows: int,
        n_columns: int,
        max_columns: int | None = None,
        fixed_columns: int = 0,
        column_groups: Sequence[tuple[str, Sequence[int]]] | None = None,
    ) -> tuple[int, int]:
        """(width, height) in pixels of a grid with these many rows and columns."""
        blocks = self.arrange(n_columns, max_columns, fixed_columns, column_groups)
        widest = max((sum(len(c) for _, c in b) for b in blocks), default=0)
        width = self.label_width + widest * self.cell
        band = GROUP_BAND if column_groups is not None else 0
        height = len(blocks) * (band + self.header + n_rows * self.cell)
        return width, height


GROUP_BAND = 22  # pixels above the column labels for group titles


def _as_rgb(cell: Any) -> np.ndarray:
    """A cell as (H, W, 3) RGB in [0, 1].

    (H, W) gray images are scaled to their own range; RGB(A) images may be channels-first
    (C, H, W) or channels-last and are clipped to [0, 1]; alpha is composited over white.
    """
    image, _ = as_numpy(cell)
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        low, high = float(image.min()), float(image.max())
        gray = (image - low) / (high - low) if high > low else np.zeros_like(image)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(
            f"a grid cell must be an (H, W) image or RGB(A) channels-first or -last, got shape "
            f"{image.shape}"
        )
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 4:
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + (1.0 - alpha)
    return image


def _fit(image: np.ndarray, box: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, 3) so its longer side is ``box`` pixels."""
    h, w = image.shape[:2]
    scale = box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(new_h) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(new_w) / scale).astype(int), w - 1)
    return image[rows][:, cols]


def _wrap_label(label: str, width: int) -> str:
    # Analyzer names such as "lrp.sequential_preset_b_flat" break best at "." and "_".
    spaced = label.replace(".", ". ").replace("_", "_ ")
    lines = textwrap.wrap(spaced, width=width, break_long_words=True)
    return "\n".join(line.replace(". ", ".").replace("_ ", "_") for line in lines)


def plot_grid(
    grid: Sequence[Sequence[Any]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    file_name: str | os.PathLike | None = None,
    layout: GridLayout | None = None,
    max_columns: int | None = None,
    fixed_columns: int = 0,
    column_groups: Sequence[tuple[str, Sequence[int]]] | None = None,
) -> Figure:
    """Draw images in a grid with row and column labels.

    Parameters
    ----------
    grid
        ``grid[i][j]`` is the image of row i (e.g. an input sample) and column j (e.g. a
        method): (H, W) gray images are scaled to their own range, RGB(A) images (channels
        first or last, numpy or torch) are shown as they are, clipped to [0, 1]; None leaves
        the cell empty. Images are enlarged with nearest-neighbour sampling to fill a cell.
    row_labels
        One label per row, shown at the left (may contain newlines, e.g. predicted and true
        labels).
    col_labels
        One label per column, shown above it (long names are wrapped).
    file_name
        If given, the figure is written there (atomically; format from the suffix).
    layout
        Pixel sizes; the figure is exactly
        ``layout.size(rows, columns, max_columns, fixed_columns)`` pixels.
    max_columns
        Wrap the columns into stacked blocks of at most this many (row labels repeated).
    fixed_columns
        Repeat the first columns (e.g. the input image) at the start of every block.
    column_groups
        (title, column indices) in order, e.g. methods by family: groups are packed into
        blocks and each gets its title above its columns.

    Returns
    -------
    The matplotlib Figure (not attached to pyplot, so it needs no closing).
    """
    layout = layout or GridLayout()
    n_rows = len(grid)
    n_columns = max((len(row) for row in grid), default=0)
    if n_rows == 0 or n_columns == 0:
        raise ValueError("plot_grid needs at least one row and one column")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")
    if col_labels is not None and len(col_labels) != n_columns:
        raise ValueError(f"{len(col_labels)} column labels for {n_columns} columns")

    width, height = layout.size(n_rows, n_columns, max_columns, fixed_columns, column_groups)
    figure = Figure(figsize=(width / layout.dpi, height / layout.dpi), dpi=layout.dpi)
    # All cells go into one pixel canvas drawn 1:1 (one figimage instead of an Axes per
    # cell, which is what keeps a 10 x 40 grid fast).
    canvas = np.ones((height, width, 3))
    pad = 3  # pixels between cells
    box = layout.cell - 2 * pad
    label_chars = max(6, layout.cell // 6)
    band = GROUP_BAND if column_groups is not None else 0

    top = 0
    for segments in layout.arrange(n_columns, max_columns, fixed_columns, column_groups):
        block = [j for _, columns in segments for j in columns]
        header = top + band + layout.header
        for i in range(n_rows):
            y = header + i * layout.cell
            if row_labels is not None:
                figure.text(
                    (layout.label_width - 8) / width,
                    1 - (y + layout.cell / 2) / height,
                    row_labels[i],
                    ha="right",
                    va="center",
                    fontsize=8,
                )
            for k, j in enumerate(block):
                cell = grid[i][j] if j < len(grid[i]) else None
                if cell is None:
                    continue
                image = _fit(_as_rgb(cell), box)
                x = layout.label_width + k * layout.cell
                # Centre the image in its box (non-square images leave a margin).
                y0 = y + pad + (box - image.shape[0]) // 2
                x0 = x + pad + (box - image.shape[1]) // 2
                canvas[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]] = image
        if col_labels is not None:
            for k, j in enumerate(block):
                x = layout.label_width + (k + 0.5) * layout.cell
                figure.text(
                    x / width,
                    1 - (header - 4) / height,
                    _wrap_label(str(col_labels[j]), label_chars),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        start = 0
        for title, columns in segments:
            if title is not None and columns:
                left = layout.label_width + start * layout.cell + pad
                right = layout.label_width + (start + len(columns)) * layout.cell - pad
                y_line = top + band - 4
                # A rule under the title shows which columns the group spans.
                canvas[y_line : y_line + 2, left:right] = 0.35
                figure.text(
                    (left + right) / 2 / width,
                    1 - (y_line - 3) / height,
                    title,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    fontweight="bold",
                )
            start += len(columns)
        top += band + layout.header + n_rows * layout.cell
    figure.figimage(canvas, xo=0, yo=0, origin="upper", zorder=0)

    if file_name is not None:
        save_figure(figure, file_name, dpi=layout.dpi)
    return figure
