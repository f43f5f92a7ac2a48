"""Image grids and reliability diagrams."""

from __future__ import annotations

import numpy as np


def image_grid(images: np.ndarray, num_cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile NHWC images in [-1, 1] into one HWC uint8 image with `pad` grey pixels between tiles."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    num_cols = num_cols or int(np.ceil(np.sqrt(n)))
    num_rows = int(np.ceil(n / num_cols))
    canvas = np.full((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c), 0.5, np.float32)
    for i, image in enumerate((np.clip(images, -1, 1) + 1) / 2):
        r, col = divmod(i, num_cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
    return (canvas * 255).round().astype(np.uint8)


def save_image_grid(path: str, images: np.ndarray, num_cols: int | None = None, scale: int = 4) -> None:
    """Write a PNG grid, upscaled `scale` x (nearest neighbour) so that small images stay visible."""
    from PIL import Image

    grid = image_grid(images, num_cols)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def plot_reliability(ax, bins: dict, title: str = "") -> None:
    """Accuracy against confidence per bin (from `calibration.reliability_bins`) on `ax`: bars are
    each bin's accuracy, dots its mean confidence, the diagonal perfect calibration; ECE averages
    the gap between bar and dot, weighted by the bin's share of the examples."""
    edges = np.asarray(bins["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = np.asarray(bins["count"]) > 0
    ax.bar(centers[filled], np.asarray(bins["accuracy"])[filled], width=width[filled], edgecolor="k",
           color="tab:blue", label="accuracy")
    ax.plot(centers[filled], np.asarray(bins["confidence"])[filled], "o", color="tab:red", ms=3,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)


def save_reliability_diagram(path: str, bins_by_name: dict, title: str = "") -> None:
    """One reliability panel per entry of `bins_by_name`, written to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bins_by_name), figsize=(3.6 * len(bins_by_name), 3.6), squeeze=False)
    for ax, (name, bins) in zip(axes[0], bins_by_name.items()):
        plot_reliability(ax, bins, name)
    axes[0][0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
