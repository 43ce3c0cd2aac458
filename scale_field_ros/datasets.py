"""Dataset folders in the layout of shared/data/README.md (manifest.json + rgb/ depth/ lidar/)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .camera import Intrinsics, as_transform

# Evaluation caps as in ZoeDepth's conventions: 10 m indoor, 80 m driving.
INDOOR_MAX_DEPTH_M = 10.0
OUTDOOR_MAX_DEPTH_M = 80.0
MIN_EVAL_DEPTH_M = 1e-3
REQUIRED_FRAME_KEYS = ("id", "rgb", "K")
# A .bin without `lidar_format` is read as KITTI's Velodyne layout (what shared/data holds).
DEFAULT_LIDAR_FORMAT = "float32 x,y,z,intensity"


@dataclass(frozen=True)
class Frame:
    """One frame of a dataset folder."""

    dataset: str
    frame_id: str
    rgb: np.ndarray  # HxWx3 uint8, RGB
    intrinsics: Intrinsics
    depth_m: np.ndarray | None  # HxW float32 ground truth, 0 where missing
    lidar_points: np.ndarray | None  # Nx3 float32 in the LiDAR frame
    T_cam_lidar: np.ndarray | None  # 4x4, LiDAR frame -> camera optical frame
    T_world_cam: np.ndarray | None  # 4x4 camera-to-world pose
    max_depth_m: float  # evaluation cap for this dataset


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str
    root: Path
    frames_meta: tuple[dict, ...]

    @property
    def outdoor(self) -> bool:
        kind = self.kind.lower()  # free text: "Outdoor driving" is as outdoor as "outdoor driving"
        return "outdoor" in kind or "driving" in kind

    @property
    def max_depth_m(self) -> float:
        return OUTDOOR_MAX_DEPTH_M if self.outdoor else INDOOR_MAX_DEPTH_M

    def __len__(self) -> int:
        return len(self.frames_meta)

    def frame(self, index: int) -> Frame:
        meta = self.frames_meta[index]
        rgb = read_rgb(self.root / meta["rgb"])
        h, w = rgb.shape[:2]
        fx, fy, cx, cy = (float(x) for x in meta["K"])
        depth = None
        if "depth" in meta:
            path = self.root / meta["depth"]
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise FileNotFoundError(f"cannot read depth image {path}")
            # an 8-bit or float image divided by depth_scale would be silently wrong ground truth
            if raw.dtype != np.uint16 or raw.ndim != 2:
                raise ValueError(
                    f"{path}: depth must be a single-channel uint16 PNG (metres = value / depth_scale), "
                    f"got {raw.dtype} with shape {raw.shape}"
                )
            depth = raw.astype(np.float32) / float(meta.get("depth_scale", 1000.0))
            if depth.shape != (h, w):
                raise ValueError(f"{path}: depth {depth.shape} differs from rgb {(h, w)}")
        lidar = None
        if "lidar" in meta:
            path, fmt = self.root / meta["lidar"], meta.get("lidar_format", DEFAULT_LIDAR_FORMAT)
            n, size = lidar_fields(fmt, str(path)), path.stat().st_size
            if size % (4 * n):  # a truncated or mis-declared file would shift every point
                raise ValueError(f"{path}: size {size} B is not a multiple of the {4 * n} B record of {fmt!r}")
            lidar = np.fromfile(path, dtype=np.float32).reshape(-1, n)[:, :3].copy()
        return Frame(
            dataset=self.name,
            frame_id=str(meta["id"]),
            rgb=rgb,
            intrinsics=Intrinsics(fx, fy, cx, cy, w, h),
            depth_m=depth,
            lidar_points=lidar,
            T_cam_lidar=as_transform(meta["T_cam_lidar"], "T_cam_lidar") if "T_cam_lidar" in meta else None,
            T_world_cam=as_transform(meta["T_world_cam"], "T_world_cam") if "T_world_cam" in meta else None,
            max_depth_m=self.max_depth_m,
        )

    def frames(self):
        for i in range(len(self)):
            yield self.frame(i)


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def lidar_fields(fmt: object, where: str) -> int:
    """float32 values a LiDAR record holds, from a `lidar_format` such as 'float32 x,y,z,intensity (Velodyne)'."""
    m = re.fullmatch(r"\s*float32\s+([\w\s,]+?)\s*(\(.*\))?\s*", fmt) if isinstance(fmt, str) else None
    fields = [f.strip().lower() for f in m.group(1).split(",")] if m else []
    if fields[:3] != ["x", "y", "z"] or not all(fields):
        raise ValueError(
            f"{where}: lidar_format {fmt!r} is not supported; expected float32 fields starting with x,y,z, "
            "e.g. 'float32 x,y,z,intensity' or 'float32 x,y,z'"
        )
    return len(fields)


def _check_frame(meta: object, where: str) -> None:
    """A frame entry has what `Dataset.frame` reads, so a bad manifest is a ValueError, not a KeyError later."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where} must be an object with id, rgb and K, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_FRAME_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)} (every frame needs {', '.join(REQUIRED_FRAME_KEYS)})")
    if not isinstance(meta["id"], str | int) or isinstance(meta["id"], bool) or str(meta["id"]) == "":
        raise ValueError(f"{where}: id must be a non-empty string or an integer, got {meta['id']!r}")
    for key in ("rgb", "depth", "lidar"):
        if key in meta and not isinstance(meta[key], str):
            raise ValueError(f"{where}: {key} must be a file path relative to the manifest, got {meta[key]!r}")
    try:
        K = np.asarray(meta["K"], dtype=np.float64)
    except (TypeError, ValueError):
        K = np.empty(0)
    if K.shape != (4,) or not np.all(np.isfinite(K)) or K[0] <= 0 or K[1] <= 0:
        raise ValueError(f"{where}: K must be 4 finite numbers [fx, fy, cx, cy] with fx, fy > 0, got {meta['K']!r}")
    scale = meta.get("depth_scale", 1000.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: depth_scale must be a finite number > 0 (value per metre), got {scale!r}")
    if "lidar" in meta:
        lidar_fields(meta.get("lidar_format", DEFAULT_LIDAR_FORMAT), where)


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} is not a dataset folder: no manifest.json (see shared/data/README.md)")
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{manifest} must be a JSON object with a frames list, got {type(meta).__name__}")
    frames = meta.get("frames", ())
    if not isinstance(frames, list | tuple):
        raise ValueError(f"{manifest}: frames must be a list of frame objects, got {type(frames).__name__}")
    if not frames:
        raise ValueError(f"{manifest} lists no frames")
    for i, frame in enumerate(frames):
        _check_frame(frame, f"{manifest} frames[{i}]")
    # outputs are named by frame id: a repeated id would overwrite another frame's files
    repeated = sorted(i for i, n in Counter(str(f["id"]) for f in frames).items() if n > 1)
    if repeated:
        raise ValueError(f"{manifest}: frame ids must be unique; repeated: {', '.join(repeated)}")
    return Dataset(
        name=str(meta.get("name", root.name)), kind=str(meta.get("kind", "")), root=root, frames_meta=tuple(frames)
    )


def shared_root() -> Path:
    """The shared/ folder beside the checkout (env SCALE_FIELD_SHARED overrides)."""
    import os

    env = os.environ.get("SCALE_FIELD_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"
