"""The paper's figures (Yang & Ji, M-EBM): image grids (Pillow), charts with matplotlib.

Image grids (:func:`save_grid`, :func:`save_p0_pictures`) need only Pillow. The charts need
matplotlib, an optional extra (``pip install 'fastebm[plots]'``); without it they raise ImportError with
a one-line message saying what to install (:func:`fastebm.evaluation.metrics.pyplot`). Every function writes one
PNG and returns its path; images are float (N, 3, H, W) in [-1, 1].
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..data.imagefiles import make_grid, save_png
from ..data.imageset import to_uint8
from .metrics import pyplot

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
          "tab:gray", "tab:olive", "tab:cyan"]


def save_grid(path: str, images: torch.Tensor, nrow: int = 8) -> str:
    """PNG grid of (N, 3, H, W) images in [-1, 1] (``nrow`` per row)."""
    return save_png(path, make_grid(to_uint8(images.cpu()), nrow=nrow))


def save_p0_pictures(p0, folder: str, n: int = 64, device="cpu", seed: int = 0) -> tuple[str, str]:
    """μ of p0 (``p0_mean.png``; the pixel-wise mean of the informative initialization, Eq. 6) and a grid of
    ``n`` p0 samples (``p0_samples.png``) — the paper's Fig. 7. The global RNG is left untouched.

    ``p0``: a :class:`~fastebm.p0.base.P0`; its ``mean`` where it has one (0 for ``uniform``). Returns the two paths.
    """
    os.makedirs(folder, exist_ok=True)
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        x = p0.sample(n, device=device).clamp(-1, 1)
    mean = getattr(p0, "mean", None)
    mean = torch.zeros_like(x[:1]) if mean is None else mean.reshape(1, *x.shape[1:]).float()
    return (save_grid(os.path.join(folder, "p0_mean.png"), mean.clamp(-1, 1), nrow=1),
            save_grid(os.path.join(folder, "p0_samples.png"), x, nrow=8))


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return path


def _show(ax, images: torch.Tensor, nrow: int, title: str | None = None) -> None:
    if len(images):
        ax.imshow(make_grid(to_uint8(images.cpu()), nrow=nrow, pad_value=255).permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def scatter(path: str, coords: np.ndarray, groups: np.ndarray, names: list[str], title: str = "") -> str:
    """2-D scatter (e.g. a t-SNE embedding, Fig. 4), one colour per group name, with a legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = "o^sPXD*v<>"
    for g, name in enumerate(names):
        pts = coords[groups == g]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, c=COLORS[g % 10], marker=markers[g % 10], label=f"{name} ({len(pts)})")
    ax.legend(markerscale=2, fontsize=8)
    ax.set(xticks=[], yticks=[], title=title)
    return _save(fig, path)


def histograms(path: str, panels: list[tuple[str, dict[str, np.ndarray]]], bins: int = 30,
               xlabel: str = "", cols: int = 5) -> str:
    """Grid of histogram panels, ``panels = [(title, {series label: values (N,)})]``; each panel's
    series share bin edges and are drawn as densities (e.g. log p(x) per class, Fig. 6)."""
    plt = pyplot()
    rows, cols = -(-len(panels) // cols), min(cols, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, series) in zip(axes.flat, panels):
        values = [np.asarray(v, float) for v in series.values() if len(v)]
        edges = np.histogram_bin_edges(np.concatenate(values), bins=bins) if values else bins
        for i, (label, v) in enumerate(series.items()):
            if len(v):
                ax.hist(v, bins=edges, density=True, alpha=0.5, color=COLORS[i % 10], label=f"{label} ({len(v)})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def violins(path: str, series: dict[str, np.ndarray], ylabel: str = "", title: str = "") -> str:
    """Violin plot with one violin per series (e.g. the energies of x+, x0 and x−)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(series) + 2, 4))
    ax.violinplot([np.asarray(v, float) for v in series.values()], showmedians=True)
    ax.set_xticks(range(1, len(series) + 1), [f"{k}\n({len(v)})" for k, v in series.items()])
    ax.set(ylabel=ylabel, title=title)
    return _save(fig, path)


def image_rows(path: str, rows: list[tuple[str, torch.Tensor]], title: str = "") -> str:
    """Labelled rows of images, ``rows = [(label, (n, 3, H, W) in [-1, 1])]``, one image strip a row
    (e.g. one class's highest / lowest p(x) and p(y|x) buffer samples, Figs. 5, 9–17)."""
    plt = pyplot()
    n = max(1, max(len(x) for _, x in rows))
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.6 * n + 1, 0.9 * len(rows) + 0.4), squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], rows):
        _show(ax, x, nrow=n)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def image_table(path: str, cells: list[list[torch.Tensor]], row_labels: list[str], col_labels: list[str]) -> str:
    """Table of image strips: ``cells[r][c]`` (n, 3, H, W) images, e.g. classes × {highest p(x), lowest p(x),
    highest p(y|x), lowest p(y|x)} — the overview of the per-class grids."""
    plt = pyplot()
    n = max(1, max(len(x) for row in cells for x in row))
    size = (0.45 * n * len(col_labels) + 1, 0.6 * len(cells) + 0.6)
    fig, axes = plt.subplots(len(cells), len(col_labels), figsize=size, squeeze=False)
    for r, row in enumerate(cells):
        for c, x in enumerate(row):
            _show(axes[r, c], x, nrow=n, title=col_labels[c] if r == 0 else None)
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    return _save(fig, path)


def curves(path: str, panels: list[tuple[str, dict[str, tuple[list, list]]]], xlabel: str = "epoch") -> str:
    """Line panels side by side, ``panels = [(ylabel, {run label: (x values, y values)})]``, one colour per run
    across panels (e.g. accuracy, FID and IS against epoch of two runs, the paper's Fig. 2(b))."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    labels = list(dict.fromkeys(label for _, series in panels for label in series))
    for ax, (ylabel, series) in zip(axes.flat, panels):
        for label, (x, y) in series.items():
            if len(x):
                ax.plot(x, y, marker="o", ms=3, color=COLORS[labels.index(label) % 10], label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:  # e.g. no FID rows: the run had --fid-every 0
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)
