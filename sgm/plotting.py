"""Figures written to files (matplotlib's Agg backend): sample scatter panels and image grids."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["scatter_panels", "image_grid", "save_image_grid", "save_samples", "nfe_curves"]


def _save(fig, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def scatter_panels(panels: Sequence[tuple[str, Tensor]], path: str, density=None, limits: float | None = None,
                   columns: int = 4, max_points: int = 4000, reference: Tensor | None = None,
                   suptitle: str | None = None) -> str:
    """One scatter panel per ``(title, samples (n, 2))`` with axes; ``density(x) -> log p`` draws contours behind
    each, ``reference`` (e.g. the data) is drawn in grey behind each. ``limits=None``: every point is in the frame."""
    if not panels:
        raise ValueError("panels must not be empty")
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    if limits is None:
        finite = [x[:max_points, :2].abs()
                  for x in [p[1] for p in panels] + ([reference] if reference is not None else [])]
        finite = [float(a[torch.isfinite(a)].max()) for a in finite if bool(torch.isfinite(a).any())]
        limits = 1.05 * max(finite + [1e-3])
    grid = None
    if density is not None:
        u = torch.linspace(-limits, limits, 200, dtype=torch.float64)
        gx, gy = torch.meshgrid(u, u, indexing="xy")
        grid = (gx.numpy(), gy.numpy(), density(torch.stack([gx.ravel(), gy.ravel()], 1)).reshape(200, 200).numpy())
    for ax, (title, x) in zip(axes.ravel(), panels):
        x = x.detach().to("cpu", torch.float64)[:max_points].numpy()
        if grid is not None:
            ax.contour(grid[0], grid[1], np.exp(grid[2]), levels=6, colors="0.6", linewidths=0.6)
        if reference is not None:
            r = reference.detach().to("cpu", torch.float64)[:max_points].numpy()
            ax.scatter(r[:, 0], r[:, 1], s=1.5, alpha=0.35, color="0.65", rasterized=True, label="data")
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color="C0", rasterized=True, label="samples")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-limits, limits)
        ax.set_ylim(-limits, limits)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("$x_1$", fontsize=8, labelpad=1)
        ax.set_ylabel("$x_2$", fontsize=8, labelpad=1)
        if reference is not None:
            ax.legend(fontsize=7, loc="upper right", markerscale=4)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def image_grid(x: Tensor, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tile images ``(n, C, H, W)`` into one ``(rows·(H+1)+1, nrow·(W+1)+1, C)`` array in [0, 1]."""
    if x.dim() != 4:
        raise ValueError(f"x must have shape (n, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = -(-n // nrow)
    lo, hi = value_range
    x = ((x.detach().to("cpu", torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    out = np.ones((rows * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[1 + r * (h + 1):1 + r * (h + 1) + h,
            1 + col * (w + 1):1 + col * (w + 1) + w] = x[i].permute(1, 2, 0).numpy()
    return out


def save_image_grid(x: Tensor, path: str, nrow: int | None = None, value_range=(-1.0, 1.0),
                    title: str | None = None) -> str:
    """Write ``image_grid(x)`` as a PNG (grey for one channel)."""
    grid = image_grid(x, nrow, value_range)
    fig, ax = plt.subplots(figsize=(max(2.0, grid.shape[1] / 16), max(2.0, grid.shape[0] / 16)))
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray" if grid.shape[2] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_samples(x: Tensor, path: str, title: str | None = None, reference: Tensor | None = None) -> str:
    """A scatter plot of 2-D samples ``(n, 2)`` (over ``reference``, e.g. the data, in grey) or an image grid of
    ``(n, C, H, W)`` in [-1, 1]."""
    if x.dim() == 2 and x.shape[1] == 2:
        return scatter_panels([(title or "samples", x)], path, columns=1, reference=reference)
    if x.dim() == 4:
        return save_image_grid(x, path, title=title)
    raise ValueError(f"samples must have shape (n, 2) or (n, C, H, W), got {tuple(x.shape)}")


def _clip_level(values: list[float], spread: float = 100.0) -> float:
    """The top of a log-scale plot: ``spread`` × the median value, or ∞ if nothing lies above it."""
    if not values:
        return float("inf")
    level = spread * float(np.median(values))
    return level if max(values) > level else float("inf")


def nfe_curves(rows: list[dict], metric: str, path: str, title: str = "", floor: float | None = None,
               limit: float | None = None) -> str:
    """``metric`` against the NFE spent, log-log, one line per ``row["sampler"]``; ``floor`` (the Monte-Carlo
    floor) dotted and ``limit`` (the exact flow map's value) dash-dotted. Values above 100× the median (a diverged
    sampler) are drawn at the top edge as ▲ and their line's label says ``(clipped)``."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    top = _clip_level([r[metric] for r in rows
                       if r.get(metric) is not None and np.isfinite(r[metric]) and r[metric] > 0]
                      + [v for v in (floor, limit) if v is not None and v > 0])
    markers = "os^vDPX*<>"
    palette = plt.get_cmap("tab20")
    dark, light = [palette(i) for i in range(0, 20, 2)], [palette(i) for i in range(1, 20, 2)]
    drawn = {True: 0, False: 0}  # lines drawn so far, peers (diffusers: light, dashed) and sgm's (dark, solid)
    for name in samplers:
        pts = sorted((r["nfe"], r[metric]) for r in rows if r["sampler"] == name
                     and r.get(metric) is not None and np.isfinite(r[metric]) and r[metric] > 0)
        if pts:
            peer = name.startswith("diffusers")
            clipped = [(n, v) for n, v in pts if v > top]
            color = (light if peer else dark + light)[drawn[peer] % (10 if peer else 20)]
            ax.plot(*zip(*[(n, min(v, top)) for n, v in pts]), marker=markers[drawn[peer] % len(markers)], ms=4,
                    lw=1.3, label=name + (" (clipped)" if clipped else ""), color=color,
                    linestyle="--" if peer else "-")
            if clipped:
                ax.plot([n for n, _ in clipped], [top] * len(clipped), "^", ms=8, color=color, clip_on=False)
            drawn[peer] += 1
    if floor is not None and floor > 0:
        ax.axhline(floor, color="k", ls=":", lw=1, label="Monte-Carlo floor (target vs target)")
    if limit is not None and limit > 0:
        ax.axhline(limit, color="0.4", ls="-.", lw=1, label="exact flow map of this x_T")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if top < float("inf"):
        ax.set_ylim(top=top * 1.15)
    ax.set_xlabel("score evaluations (NFE)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return _save(fig, path)
