"""Figures without pyplot: `matplotlib.figure.Figure` objects, drawn headless or in a notebook.

No backend is chosen and no global pyplot state is touched: a figure is returned to the
caller (a notebook shows it), and `save` writes it as a PNG through Agg.
"""

import os

from matplotlib.figure import Figure

DPI = 120


def figure(width: float, height: float) -> Figure:
  """An empty figure of `width` x `height` inches."""
  return Figure(figsize=(width, height))


def save(fig: Figure, path: str | os.PathLike) -> str:
  """Writes `fig` as a PNG of DPI dots per inch to `path`; returns the path as a str."""
  fig.savefig(path, dpi=DPI)
  return os.fspath(path)
