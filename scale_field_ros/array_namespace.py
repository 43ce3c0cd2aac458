"""A tiny array namespace, so that each scale-field formula is written once for numpy and for torch.

`field.py` writes the prior and compose math against an `xp` argument; `NUMPY` (here) runs it on single
frames in float32 with cv2 and in-place updates (the CPU pipeline), `field_torch.TorchOps` on batches of
frames on any device. The formulas use only what both libraries spell the same (`xp.sqrt`, `xp.where`,
`.mT`, `@`, `...` indexing, `xp.einsum`); the methods below cover the rest. Leading batch axes are allowed
everywhere: maps are (..., K, h, w), images (..., H, W), weights (..., K+1), covariances (..., K+1, K+1).
"""

from __future__ import annotations

import cv2
import numpy as np


class NumpyOps:
    """numpy + cv2, working precision float32; `*_into` reuse their first argument's memory."""

    def __getattr__(self, name: str):
        return getattr(np, name)  # sqrt, abs, exp, where, isfinite, einsum, nan_to_num, ...

    @staticmethod
    def work(a) -> np.ndarray:
        """The working precision of the per-pixel math."""
        return np.asarray(a, np.float32)

    @staticmethod
    def exact(a) -> np.ndarray:
        """The precision of the small linear algebra (weights, covariances)."""
        return np.asarray(a, np.float64)

    @staticmethod
    def clip(a, lo=None, hi=None):
        # one-sided bounds through maximum / minimum: np.clip costs more on small arrays
        if hi is None:
            return np.maximum(a, lo)
        return np.minimum(a, hi) if lo is None else np.clip(a, lo, hi)

    @staticmethod
    def nan_to_num(a, **kwargs):
        """np.nan_to_num, skipped (no copy) when everything is finite, the usual case."""
        a = np.asarray(a)
        return a if np.isfinite(a).all() else np.nan_to_num(a, **kwargs)

    @staticmethod
    def cat(arrays, axis: int):
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def stack(values, axis: int = -1):
        """Stack after broadcasting (scalars and arrays mixed)."""
        if all(np.ndim(v) == 0 for v in values):  # one frame's prior: a plain vector, without broadcast's cost
            return np.array([float(v) for v in values])
        return np.stack(np.broadcast_arrays(*values), axis=axis)

    @staticmethod
    def diag(std):
        return np.diag(std)

    @staticmethod
    def eigh(a):
        return np.linalg.eigh(a)

    @staticmethod
    def combine(weights: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """sum_k weights[k] * maps[k] for one frame: BLAS through tensordot."""
        return np.tensordot(weights, maps, axes=1)

    @staticmethod
    def upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Bilinear resize with half-pixel centres (cv2.INTER_LINEAR), always a fresh float32 array."""
        h, w = shape
        if a.shape == (h, w):
            return a.astype(np.float32)  # a copy: callers write into the result
        return cv2.resize(a.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)

    @staticmethod
    def masked_median(x: np.ndarray, mask: np.ndarray) -> float:
        """The median of `x` where `mask` (one frame), 0 where it is empty."""
        return float(np.median(x[mask])) if mask.any() else 0.0

    @staticmethod
    def reciprocal(a: np.ndarray) -> np.ndarray:
        """1 / a by division, the same values: numpy's float32 reciprocal loop is not vectorised (2x the time)."""
        return np.divide(1.0, a)

    @staticmethod
    def mul_into(a: np.ndarray, b) -> np.ndarray:
        return np.multiply(a, b, out=a)

    @staticmethod
    def add_into(a: np.ndarray, b) -> np.ndarray:
        return np.add(a, b, out=a)

    @staticmethod
    def clip_into(a: np.ndarray, lo, hi) -> np.ndarray:
        return np.clip(a, lo, hi, out=a)


NUMPY = NumpyOps()
