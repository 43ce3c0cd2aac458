"""Depth accuracy metrics in the conventions of the monocular depth literature (Eigen; ZoeDepth caps)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .anchors import Anchors


@dataclass(frozen=True)
class DepthMetrics:
    """Errors of a metric depth map against ground truth over the evaluated pixels.

    absrel, sqrel, rmse (m), rmse_log, log10, silog (x100, as in ZoeDepth), delta1-3 (fraction of pixels
    with max(pred/gt, gt/pred) below 1.25^k), mae (m), irmse (1/km, as in KITTI), n_pixels evaluated.
    """

    absrel: float
    sqrel: float
    rmse: float
    rmse_log: float
    log10: float
    silog: float
    delta1: float
    delta2: float
    delta3: float
    mae: float
    irmse: float
    n_pixels: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(DepthMetrics.__dataclass_fields__)


def evaluation_mask(
    gt_depth_m: np.ndarray,
    min_depth_m: float,
    max_depth_m: float,
    exclude: Anchors | None = None,
) -> np.ndarray:
    """Pixels with finite ground truth inside [min_depth_m, max_depth_m], minus the pixels used as anchors.

    Anchor pixels are excluded because a method that copies its anchors would otherwise be rewarded.
    """
    gt = np.asarray(gt_depth_m)
    mask = np.isfinite(gt) & (gt > min_depth_m) & (gt <= max_depth_m)
    if exclude is not None and len(exclude):
        h, w = gt.shape
        col = np.clip(np.round(exclude.u).astype(np.int64), 0, w - 1)
        row = np.clip(np.round(exclude.v).astype(np.int64), 0, h - 1)
        mask[row, col] = False
    return mask


def compute_metrics(
    pred_depth_m: np.ndarray,
    gt_depth_m: np.ndarray,
    mask: np.ndarray,
    depth_range_m: tuple[float, float] | None = None,
) -> DepthMetrics:
    """Metrics over `mask`; an empty mask gives NaNs. With `depth_range_m` (the evaluation caps, as the mask's),
    predictions are clipped to it first, as ZoeDepth's evaluation does (+inf to the far cap, NaN to the near
    one): a prediction beyond the 10 m an indoor set is scored to is not charged for the extra metres.
    Predictions are floored at 1 mm in any case so that logs stay finite."""
    if pred_depth_m.shape != gt_depth_m.shape or mask.shape != gt_depth_m.shape:
        raise ValueError(f"shapes differ: pred {pred_depth_m.shape}, gt {gt_depth_m.shape}, mask {mask.shape}")
    gt = gt_depth_m[mask].astype(np.float64)
    pred = pred_depth_m[mask].astype(np.float64)
    n = int(gt.size)
    if n == 0:
        nan = float("nan")
        return DepthMetrics(nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, 0)
    if depth_range_m is not None:
        lo, hi = depth_range_m
        pred = np.clip(np.where(np.isnan(pred), lo, np.where(np.isposinf(pred), hi, pred)), lo, hi)
    pred = np.where(np.isfinite(pred), np.maximum(pred, 1e-3), 1e-3)
    diff = pred - gt
    log_diff = np.log(pred) - np.log(gt)
    ratio = np.maximum(pred / gt, gt / pred)
    silog = np.sqrt(max(np.mean(log_diff**2) - np.mean(log_diff) ** 2, 0.0)) * 100.0
    return DepthMetrics(
        absrel=float(np.mean(np.abs(diff) / gt)),
        sqrel=float(np.mean(diff**2 / gt)),
        rmse=float(np.sqrt(np.mean(diff**2))),
        rmse_log=float(np.sqrt(np.mean(log_diff**2))),
        log10=float(np.mean(np.abs(np.log10(pred) - np.log10(gt)))),
        silog=float(silog),
        delta1=float(np.mean(ratio < 1.25)),
        delta2=float(np.mean(ratio < 1.25**2)),
        delta3=float(np.mean(ratio < 1.25**3)),
        mae=float(np.mean(np.abs(diff))),
        irmse=float(np.sqrt(np.mean((1000.0 / pred - 1000.0 / gt) ** 2))),
        n_pixels=n,
    )


def finite_means(table) -> list[float | None]:
    """Per column of `table` (rows: frames or draws; None or NaN where a metric is undefined), the mean over the
    rows where it is finite; None where no row has it (a draw or frame that left no pixel to score counts for
    nothing, rather than making the mean NaN, which is not JSON)."""
    values = np.array(table, np.float64).reshape(len(table), -1)  # None -> NaN
    ok = np.isfinite(values)
    sums = np.where(ok, values, 0.0).sum(axis=0)
    counts = ok.sum(axis=0)
    return [float(t / c) if c else None for t, c in zip(sums, counts, strict=True)]


def shown(value: float | None, digits: int) -> str:
    """A metric for a printed summary: n/a where it is undefined (no pixel was left to score)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


SPARSIFICATION_STEPS = 20  # fractions 0, 0.05, ..., 0.95 of the pixels removed


@dataclass(frozen=True)
class StdCalibration:
    """How well a published per-pixel std describes the error on the scored pixels.

    ratio_median: median of |error| / std (0.674 for a calibrated Gaussian std); within_1std: the fraction with
    |error| <= std (0.683); rms_ratio: RMS error over RMS std (1 when the std is right on average in the square,
    whatever the shape of the error's distribution); ause: area under the sparsification error of AbsRel
    (pixels removed in order of decreasing std / depth, against the order of their own AbsRel: 0 for a std that
    ranks the errors perfectly); ause_random: the same for a random order (what a std that ranks nothing gets)."""

    ratio_median: float
    within_1std: float
    rms_ratio: float
    ause: float
    ause_random: float

    @staticmethod
    def undefined() -> StdCalibration:
        nan = float("nan")
        return StdCalibration(nan, nan, nan, nan, nan)


def std_calibration(depth_m, std_m, truth_m, mask, caps) -> StdCalibration:
    """`StdCalibration` of `std_m` for `depth_m` against `truth_m` on `mask`; undefined (NaN) when no pixel is
    scored. The prediction is clipped to the evaluation caps, as `compute_metrics` clips it."""
    if not mask.any():
        return StdCalibration.undefined()
    pred = np.clip(depth_m[mask], *caps).astype(np.float64)
    truth = truth_m[mask].astype(np.float64)
    err = np.abs(pred - truth)
    std = np.maximum(std_m[mask].astype(np.float64), 1e-12)
    absrel = err / truth
    by_std = _sparsification(absrel, np.argsort(-(std / pred), kind="stable"))
    oracle = _sparsification(absrel, np.argsort(-absrel, kind="stable"))
    return StdCalibration(
        ratio_median=float(np.median(err / std)),
        within_1std=float(np.mean(err <= std)),
        rms_ratio=float(np.sqrt(np.mean(err**2) / np.mean(std**2))),
        ause=float(np.mean(by_std - oracle)),
        ause_random=float(np.mean(absrel.mean() - oracle)),
    )


def _sparsification(error: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mean `error` of the pixels left after removing the first 0, 5, ..., 95 % of `order`."""
    n = len(error)
    tail_sum = np.cumsum(error[order][::-1])[::-1]  # tail_sum[i]: sum over order[i:]
    start = (np.arange(SPARSIFICATION_STEPS) * n) // SPARSIFICATION_STEPS
    return tail_sum[start] / (n - start)
