"""Plane geometry of synthetic views: 4-point homographies, mapped points, visibility of a region.

Coordinates as in :mod:`asymfuse.cloud.data.views`: pixel centres are integers; a box
``(x0, y0, x1, y1)`` of integer pixel indices is exclusive at ``x1``/``y1``; reported bounding
boxes use pixel-edge coordinates.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]


def region_corners(box: Box) -> np.ndarray:
    """``(4, 2)`` float64 pixel-edge corners of ``box`` (clockwise from the top-left), in pixel-centre coordinates."""
    x0, y0, x1, y1 = (float(v) - 0.5 for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Solve the ``(3, 3)`` float64 homography (``H[2, 2] = 1``) mapping 4 ``src`` points to ``dst``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    sol = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(sol, 1.0).reshape(3, 3)


def apply_homography(hmat: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(N, 2)`` points; returns ``((N, 2) mapped points, (N,) projective w)``."""
    proj = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ hmat.T
    w = proj[:, 2]
    safe = np.where(np.abs(w) > 1e-12, w, 1e-12)
    return proj[:, :2] / safe[:, None], w


def visible_fraction(box: Box, hmat: np.ndarray, size: tuple[int, int], *,
                     occluder: Box | None = None, grid: int = 96) -> float:
    """Fraction of the region's source pixels that land inside the view and outside the occluder.

    Args:
        box: the region in source pixels.
        hmat: ``(3, 3)`` source -> view homography.
        size: the view ``(w, h)``.
        occluder: ``(x0, y0, x1, y1)`` view pixels (exclusive), or None.
        grid: at most ``grid x grid`` pixel centres of the region are tested.
    """
    x0, y0, x1, y1 = box
    nx, ny = min(x1 - x0, grid), min(y1 - y0, grid)
    xs = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx - 0.5
    ys = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny - 0.5
    gx, gy = np.meshgrid(xs, ys)
    uv, w = apply_homography(hmat, np.stack([gx.ravel(), gy.ravel()], axis=1))
    u, v = uv[:, 0], uv[:, 1]
    inside = (w > 0) & (u >= -0.5) & (u < size[0] - 0.5) & (v >= -0.5) & (v < size[1] - 0.5)
    if occluder is not None:
        ox0, oy0, ox1, oy1 = occluder
        inside &= ~((u >= ox0 - 0.5) & (u < ox1 - 0.5) & (v >= oy0 - 0.5) & (v < oy1 - 0.5))
    return float(inside.mean())


def region_bbx(box: Box, hmat: np.ndarray, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Bounding box ``[x1, y1, x2, y2]`` of the warped region, pixel-edge coordinates, clipped to the view."""
    uv, _ = apply_homography(hmat, region_corners(box))
    lo, hi = uv.min(axis=0) + 0.5, uv.max(axis=0) + 0.5
    w, h = size
    return (float(np.clip(lo[0], 0, w)), float(np.clip(lo[1], 0, h)),
            float(np.clip(hi[0], 0, w)), float(np.clip(hi[1], 0, h)))
