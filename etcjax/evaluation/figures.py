"""Figures of the evaluation suite: box plots, image grids, curves (PNG).

Matplotlib runs with the non-interactive Agg backend, so figures are written
on machines without a display; every function saves one PNG and closes it.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

_DPI = 120


def box_plot(groups: Mapping[str, Mapping[str, np.ndarray]], path: str,
             ylabel: str, title: str,
             ylim: Optional[Tuple[float, float]] = None) -> str:
  """Grouped box plots, one panel per group (e.g. per scheme).

  Args:
    groups: {panel title: {box label: float values [n]}}; panels share the
      y axis. Non-finite values are left out of the boxes.
    path: PNG file to write.
    ylabel: y-axis label (the metric).
    title: figure title.
    ylim: y-axis limits, or None for matplotlib's choice.

  Returns:
    `path`.
  """
  if not groups:
    raise ValueError(f"box_plot {title!r}: nothing to plot")
  width = max(3.0, 0.7 * max(len(boxes) for boxes in groups.values()) + 1.2)
  fig, axes = plt.subplots(1, len(groups), sharey=True, squeeze=False,
                           figsize=(width * len(groups), 3.6))
  for ax, (panel, boxes) in zip(axes[0], groups.items()):
    data = [np.asarray(v, np.float64)[np.isfinite(v)] for v in boxes.values()]
    ax.boxplot(data, showfliers=True, flierprops=dict(markersize=2))
    ax.set_xticks(range(1, len(boxes) + 1))
    ax.set_xticklabels(list(boxes), rotation=35, ha="right", fontsize=8)
    ax.set_title(panel, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if ylim is not None:
      ax.set_ylim(*ylim)
  axes[0][0].set_ylabel(ylabel)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return path


def image_grid(rows: Sequence[Sequence[Optional[np.ndarray]]],
               row_labels: Sequence[str], column_labels: Sequence[str],
               path: str, title: str = "", cell_inches: float = 1.3) -> str:
  """A grid of images with row and column labels (like the paper's Fig. 6).

  Args:
    rows: rows of uint8 `[H, W, 3]` (or `[H, W, 1]`) images; None leaves a
      cell empty (an attack that does not apply to a scheme).
    row_labels: one label per row.
    column_labels: one label per column.
    path: PNG file to write.
    title: figure title.
    cell_inches: size of one cell.

  Returns:
    `path`.
  """
  n_rows, n_cols = len(rows), len(column_labels)
  if len(row_labels) != n_rows or any(len(r) != n_cols for r in rows):
    raise ValueError(
        f"image_grid: {n_rows} rows with {len(row_labels)} labels and "
        f"{n_cols} column labels, row lengths {[len(r) for r in rows]}")
  fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                           figsize=(cell_inches * n_cols + 1.2,
                                    cell_inches * n_rows + 0.6))
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      ax = axes[i][j]
      ax.set_xticks([])
      ax.set_yticks([])
      if image is not None:
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
          ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
          ax.imshow(image, interpolation="nearest")
      else:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8,
                color="0.5", transform=ax.transAxes)
        for spine in ax.spines.values():
          spine.set_visible(False)
      if i == 0:
        ax.set_title(column_labels[j], fontsize=8)
      if j == 0:
        ax.set_ylabel(row_labels[i], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return path


def line_plot(curves: Mapping[str, Tuple[Sequence[float], Sequence[float]]],
              path: str, xlabel: str, ylabel: str, title: str,
              panels: Optional[Dict[str, Sequence[str]]] = None) -> str:
  """Curves y(x) with markers, e.g. rate-distortion curves.

  Args:
    curves: {label: (x values, y values)}.
    path: PNG file to write.
    xlabel, ylabel: axis labels.
    title: figure title.
    panels: optional {panel title: [curve labels]} to split curves over
      side-by-side panels; one panel with every curve when None.

  Returns:
    `path`.
  """
  if not curves:
    raise ValueError(f"line_plot {title!r}: nothing to plot")
  panels = panels or {"": list(curves)}
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(5.0 * len(panels), 3.8))
  for ax, (panel, labels) in zip(axes[0], panels.items()):
    for label in labels:
      x, y = curves[label]
      ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if panel:
      ax.set_title(panel, fontsize=10)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return path
