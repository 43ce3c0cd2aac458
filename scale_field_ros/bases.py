"""Image-adaptive basis maps B_1..B_K of the scale field, built at a reduced working resolution.

Family (each map normalised to unit RMS; B_1 = 1 so that weights e_1 are the identity correction):
- constant;
- smooth functions of image position (monomials in x, y up to `poly_degree`);
- soft partitions over log relative inverse depth, so the correction can change with depth;
- leading principal components of the backbone's intermediate features, upsampled with a guided filter
  (guide: log relative inverse depth), so the correction follows objects and surfaces.
The family grows with the number of anchors (`tier_for`); `BasisSet.signature` names the family so the
temporal filter can tell when the weights no longer mean the same thing and must reset.
PCA signs are fixed by correlation with relative depth, so the same scene gives the same bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .backbone import BackboneOutput, DepthKind


@dataclass(frozen=True)
class BasisConfig:
    work_long_side: int = 160  # working resolution: long image side in pixels
    poly_degree: int = 2
    depth_bins: int = 4
    feature_components: int = 4
    feature_name: str = ""  # "" = the finest feature map with at least 8 channels
    guided_radius: int = 4  # working-res pixels
    guided_eps: float = 1e-2
    tier_anchors: tuple[int, int, int] = (8, 24, 60)  # anchors needed for tiers 1 (linear), 2 (+depth), 3 (+all)


@dataclass(frozen=True)
class BasisSet:
    """Bases of one frame plus the relative inverse depth they multiply.

    maps: K x h x w float32 at working resolution, maps[0] == 1.
    names: name of each map. inv_rel: H x W float32 relative inverse depth normalised to median 1.
    inv_rel_work: the same at working resolution. scale_inv_rel: the median that was divided out.
    constant_relative: the relative map carries no depth structure (flat or invalid).
    """

    maps: np.ndarray
    names: tuple[str, ...]
    inv_rel: np.ndarray
    inv_rel_work: np.ndarray
    scale_inv_rel: float
    constant_relative: bool
    tier: int

    @property
    def k(self) -> int:
        return self.maps.shape[0]

    @property
    def signature(self) -> str:
        """Same string <=> same family: the filter resets when it changes."""
        return f"t{self.tier}:" + ",".join(self.names)

    @property
    def full_shape(self) -> tuple[int, int]:
        return self.inv_rel.shape  # type: ignore[return-value]

    @property
    def work_shape(self) -> tuple[int, int]:
        return self.inv_rel_work.shape  # type: ignore[return-value]


def relative_inverse_depth(out: BackboneOutput) -> tuple[np.ndarray, float, bool]:
    """Positive finite relative inverse depth normalised to median 1, the median removed, and a flag for
    a relative map without usable structure (constant, or no valid pixel). Invalid pixels get the median."""
    rel = np.asarray(out.relative, np.float32)
    valid = np.isfinite(rel) & (rel > 0)
    if not valid.any():
        return np.ones(rel.shape, np.float32), 1.0, True
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(valid, 1.0 / rel, 0.0) if out.kind is DepthKind.DEPTH else np.where(valid, rel, 0.0)
    inv = inv.astype(np.float32)
    good = valid & np.isfinite(inv) & (inv > 0)
    med = float(np.median(inv[good])) if good.any() else 1.0
    if not (np.isfinite(med) and med > 0):
        return np.ones(rel.shape, np.float32), 1.0, True
    g = np.where(good, inv / med, 1.0).astype(np.float32)
    # bound extreme values: a few near-zero depths must not dominate the fit
    np.clip(g, 1e-3, 1e3, out=g)
    log_g = np.log(g[good]) if good.any() else np.zeros(1)
    constant = float(np.std(log_g)) < 1e-4
    return g, med, constant


def working_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    h, w = shape
    s = min(1.0, long_side / max(h, w))
    return max(2, int(round(h * s))), max(2, int(round(w * s)))


def tier_for(n_anchors: int, config: BasisConfig) -> int:
    return int(np.searchsorted(np.asarray(config.tier_anchors), n_anchors, side="right"))


def build_bases(out: BackboneOutput, config: BasisConfig, n_anchors: int) -> BasisSet:
    """The basis family for `n_anchors` anchors (see the module doc)."""
    g, med, constant = relative_inverse_depth(out)
    h, w = working_shape(g.shape, config.work_long_side)
    g_work = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA)
    log_g = np.log(g_work)
    tier = tier_for(n_anchors, config)
    maps = [np.ones((h, w), np.float32)]
    names = ["const"]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    xn = (x + 0.5) / w * 2.0 - 1.0
    yn = (y + 0.5) / h * 2.0 - 1.0
    degree = min(config.poly_degree, 1 if tier == 1 else config.poly_degree) if tier >= 1 else 0
    for total in range(1, degree + 1):
        for py in range(total + 1):
            maps.append(xn ** (total - py) * yn**py)
            names.append(f"x{total - py}y{py}")
    if tier >= 2 and not constant and config.depth_bins >= 2:
        for i, m in enumerate(depth_partition(log_g, config.depth_bins)):
            maps.append(m)
            names.append(f"depth{i}")
    if tier >= 3 and not constant and config.feature_components > 0:
        comps = feature_components(out, config, log_g)
        for i, m in enumerate(comps):
            maps.append(m)
            names.append(f"pca{i}")
    stack = np.stack(maps).astype(np.float32)
    rms = np.sqrt(np.mean(stack[1:] ** 2, axis=(1, 2), keepdims=True)) if len(stack) > 1 else None
    if rms is not None:
        stack[1:] /= np.maximum(rms, 1e-6)
    return BasisSet(stack, tuple(names), g, g_work.astype(np.float32), med, constant, tier)


def depth_partition(log_g: np.ndarray, bins: int) -> list[np.ndarray]:
    """Soft partition of unity over log relative inverse depth: hat functions centred on quantiles."""
    centres = np.quantile(log_g, (np.arange(bins) + 0.5) / bins)
    centres = np.maximum.accumulate(centres + np.arange(bins) * 1e-4)
    t = np.interp(log_g, centres, np.arange(bins, dtype=np.float64))  # clamped outside the end centres
    return [np.clip(1.0 - np.abs(t - i), 0.0, 1.0).astype(np.float32) for i in range(bins)]


def pick_feature(out: BackboneOutput, name: str) -> np.ndarray | None:
    if name:
        return out.features.get(name)
    best = None
    for fmap in out.features.values():
        if fmap.shape[0] >= 8 and (best is None or fmap.shape[1] * fmap.shape[2] > best.shape[1] * best.shape[2]):
            best = fmap
    return best


def feature_components(out: BackboneOutput, config: BasisConfig, log_g_work: np.ndarray) -> list[np.ndarray]:
    """Leading principal components of a feature map, sign-fixed, guided-upsampled to working resolution."""
    fmap = pick_feature(out, config.feature_name)
    if fmap is None:
        return []
    c, fh, fw = fmap.shape
    x = np.nan_to_num(fmap.reshape(c, -1).astype(np.float64))
    x -= x.mean(axis=1, keepdims=True)
    cov = x @ x.T / max(x.shape[1] - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    k = min(config.feature_components, c)
    order = np.argsort(evals)[::-1][:k]
    if evals[order[0]] <= 1e-12:
        return []
    comps = (evecs[:, order].T @ x).reshape(k, fh, fw).astype(np.float32)
    h, w = log_g_work.shape
    guide_small = cv2.resize(log_g_work, (fw, fh), interpolation=cv2.INTER_AREA).ravel()
    guide_small = guide_small - guide_small.mean()
    result = []
    for comp, ev in zip(comps, evals[order], strict=True):
        if ev <= 1e-9 * evals[order[0]]:
            continue
        if float(comp.ravel() @ guide_small) < 0:  # deterministic sign
            comp = -comp
        up = cv2.resize(comp, (w, h), interpolation=cv2.INTER_LINEAR)
        up = guided_filter(log_g_work.astype(np.float32), up, config.guided_radius, config.guided_eps)
        up = up - up.mean()
        result.append(up.astype(np.float32))
    return result


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide: edges of `guide` are transferred to `src`."""
    ksize = (2 * radius + 1, 2 * radius + 1)

    def box(a):
        return cv2.boxFilter(a, -1, ksize, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def sample_maps(maps: np.ndarray, u: np.ndarray, v: np.ndarray, full_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear samples (N, K) of K x h x w maps at full-resolution pixel coordinates u, v."""
    k, h, w = maps.shape
    fh, fw = full_shape
    x = np.clip((np.asarray(u, np.float64) + 0.5) * (w / fw) - 0.5, 0, w - 1)
    y = np.clip((np.asarray(v, np.float64) + 0.5) * (h / fh) - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    flat = maps.reshape(k, -1).T  # (h*w, K)
    i00 = y0 * w + x0
    return (
        flat[i00] * (1 - fx) * (1 - fy)
        + flat[i00 + 1] * fx * (1 - fy)
        + flat[i00 + w] * (1 - fx) * fy
        + flat[i00 + w + 1] * fx * fy
    )
