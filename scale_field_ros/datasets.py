"""Dataset folders in the layout of shared/data/README.md (manifest.json + rgb/ depth/ lidar/)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .camera import Intrinsics, as_transform

# Evaluation caps as in ZoeDepth's conventions: 10 m indoor, 80 m driving.
INDOOR_MAX_DEPTH_M = 10.0
OUTDOOR_MAX_DEPTH_M = 80.0
MIN_EVAL_DEPTH_M = 1e-3


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
        return "outdoor" in self.kind or "driving" in self.kind

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
            raw = cv2.imread(str(self.root / meta["depth"]), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise FileNotFoundError(f"cannot read depth image {self.root / meta['depth']}")
            depth = raw.astype(np.float32) / float(meta.get("depth_scale", 1000.0))
            if depth.shape != (h, w):
                raise ValueError(f"{self.root / meta['depth']}: depth {depth.shape} differs from rgb {(h, w)}")
        lidar = None
        if "lidar" in meta:
            rec = np.fromfile(self.root / meta["lidar"], dtype=np.float32)
            if rec.size % 4:
                raise ValueError(f"{self.root / meta['lidar']}: size is not a multiple of 4 float32")
            lidar = rec.reshape(-1, 4)[:, :3].copy()
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


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} is not a dataset folder: no manifest.json (see shared/data/README.md)")
    meta = json.loads(manifest.read_text())
    frames = tuple(meta.get("frames", ()))
    if not frames:
        raise ValueError(f"{manifest} lists no frames")
    return Dataset(name=str(meta.get("name", root.name)), kind=str(meta.get("kind", "")), root=root, frames_meta=frames)


def shared_root() -> Path:
    """The shared/ folder beside the checkout (env SCALE_FIELD_SHARED overrides)."""
    import os

    env = os.environ.get("SCALE_FIELD_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"
