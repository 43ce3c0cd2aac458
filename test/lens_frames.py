"""Lenses and raw (distorted) images made from real rectified frames, for the lens-distortion tests."""

from __future__ import annotations

import cv2
import numpy as np

from scale_field_ros.camera import Intrinsics

LENSES = [
    ("plumb_bob", (-0.28, 0.07, 1e-3, -5e-4, 0.0)),  # a wide-angle barrel lens
    ("rational_polynomial", (0.4, -0.1, 1e-3, 2e-4, 0.01, 0.7, -0.05, 0.02)),
    ("equidistant", (-0.02, 0.01, -0.005, 0.001)),  # fisheye
]


def with_lens(k: Intrinsics, model: str, d) -> Intrinsics:
    return Intrinsics(k.fx, k.fy, k.cx, k.cy, k.width, k.height, model, d)


def raw_frame(frame, cam: Intrinsics):
    """The frame as a camera with lens `cam` sees it: each raw pixel takes the rectified pixel its ray hits."""
    h, w = frame.depth_m.shape
    x, y = cam.rays(h, w)
    map_u = (cam.fx * np.nan_to_num(x, nan=-1e4) + cam.cx).astype(np.float32)
    map_v = (cam.fy * np.nan_to_num(y, nan=-1e4) + cam.cy).astype(np.float32)
    rgb = cv2.remap(frame.rgb, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    depth = cv2.remap(frame.depth_m, map_u, map_v, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return rgb, depth, map_u, map_v
