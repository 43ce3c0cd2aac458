"""The backbone interface every downstream stage uses.

A backbone takes an RGB uint8 HxWx3 image and returns a `BackboneOutput`: relative depth at the
input image's resolution, what that depth means, and named intermediate feature maps. Resizing and
normalisation belong to the backbone, never to its callers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 8192


class DepthKind(str, enum.Enum):
    """What the backbone's relative map holds."""

    DEPTH = "depth"  # grows with distance
    INVERSE_DEPTH = "inverse_depth"  # disparity-like, shrinks with distance


@dataclass(frozen=True)
class BackboneOutput:
    """Relative depth plus intermediate features for one image.

    relative: HxW float32 at the input image's resolution.
    kind: whether `relative` is depth or inverse depth.
    metric: True when the values are roughly metric (still to be corrected), False when
        affine-invariant (unknown scale and shift).
    features: name -> C x h x w float32 feature map at the network's own resolution.
    graph_basis_config: for a graph that computes the analytic bases (features `bases`, `inv_rel_work`), the
        `BasisConfig.maps_signature` it was exported with; "" otherwise.
    learned_bases_head: for a graph that computes a basis head's maps (feature `learned_bases`), the weights
        digest of that head (`basis_head.state_digest`); "" otherwise or when the file does not say.
    """

    relative: np.ndarray
    kind: DepthKind
    metric: bool
    features: dict[str, np.ndarray] = field(default_factory=dict)
    graph_basis_config: str = ""
    learned_bases_head: str = ""

    def __post_init__(self) -> None:
        if self.relative.ndim != 2:
            raise ValueError(f"relative depth must be HxW, got shape {self.relative.shape}")
        for name, fmap in self.features.items():
            if fmap.ndim != 3:
                raise ValueError(f"feature map {name!r} must be C x h x w, got shape {fmap.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.relative.shape  # type: ignore[return-value]


@runtime_checkable
class Backbone(Protocol):
    """Anything that turns an RGB image into a `BackboneOutput`."""

    name: str
    runtime: str

    def infer(self, rgb: np.ndarray) -> BackboneOutput: ...


class ImageError(ValueError):
    """An input image that cannot be turned into RGB uint8."""


def to_rgb8(image: np.ndarray, *, channel_order: str = "rgb") -> np.ndarray:
    """Convert an image to contiguous RGB uint8 HxWx3, or raise `ImageError` saying why not.

    Accepts grey (HxW or HxWx1), RGB/BGR, RGBA/BGRA; uint8, uint16 (scaled down by 257) and float
    in [0, 1]. `channel_order` is "rgb" or "bgr" for 3/4-channel input.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ImageError(f"image must be HxW or HxWxC, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE or max(h, w) > MAX_IMAGE_SIDE:
        raise ImageError(
            f"image size {w}x{h} is outside the supported range ({MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} pixels a side)"
        )
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) // 257).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageError("float image contains NaN or inf")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageError("float image must hold values in [0, 1]")
        arr = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image dtype {arr.dtype}; expected uint8, uint16 or float")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels in (3, 4):
        arr = arr[:, :, :3]
        if channel_order == "bgr":
            arr = arr[:, :, ::-1]
        elif channel_order != "rgb":
            raise ImageError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    else:
        raise ImageError(f"image must have 1, 3 or 4 channels, got {channels}")
    return np.ascontiguousarray(arr)
