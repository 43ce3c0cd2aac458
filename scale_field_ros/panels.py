"""One PNG per frame for eyeballing: RGB with anchors, relative depth, scale field, metric depth, error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _colour(a: np.ndarray, lo: float, hi: float, cmap: int = cv2.COLORMAP_TURBO) -> np.ndarray:
    t = np.clip((np.nan_to_num(a) - lo) / max(hi - lo, 1e-9), 0, 1)
    return cv2.applyColorMap((t * 255).astype(np.uint8), cmap)


def write_panel(path, rgb, anchors, backbone_out, result, truth_depth_m, mask, max_depth_m) -> Path:
    """Write a 5-tile strip (BGR PNG) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tile_rgb = np.ascontiguousarray(rgb[:, :, ::-1])
    for u, v in zip(np.round(anchors.u).astype(int), np.round(anchors.v).astype(int), strict=True):
        cv2.circle(tile_rgb, (int(u), int(v)), 2, (0, 255, 0), -1)
    rel = np.nan_to_num(backbone_out.relative)
    tiles = [
        tile_rgb,
        _colour(rel, *np.percentile(rel, [2, 98])),
        _colour(result.scale_field, *np.percentile(result.scale_field, [2, 98])),
        _colour(result.depth_m, 0.0, max_depth_m),
    ]
    err = np.zeros_like(result.depth_m)
    err[mask] = np.abs(result.depth_m[mask] - truth_depth_m[mask]) / truth_depth_m[mask]
    err_tile = _colour(err, 0.0, 0.3, cv2.COLORMAP_INFERNO)
    err_tile[~mask] = 0
    tiles.append(err_tile)
    names = ["rgb + anchors", "relative depth", "scale field", "metric depth", "abs rel error (0-0.3)"]
    for t, name in zip(tiles, names, strict=True):
        cv2.putText(t, name, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    cv2.imwrite(str(path), np.concatenate(tiles, axis=1))
    return path
