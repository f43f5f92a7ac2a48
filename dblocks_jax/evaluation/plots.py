"""Image grids and training-curve plots."""

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
