"""Image-adaptive basis maps B_1..B_K of the scale field, built at a reduced working resolution.

Family (each map normalised to unit RMS; B_1 = 1 so that weights e_1 are the identity correction):
- constant;
- smooth functions of image position (monomials in x, y up to `poly_degree`);
- soft partitions over log relative inverse depth, so the correction can change with depth;
- leading principal components of the backbone's intermediate features, upsampled with a guided filter
  (guide: log relative inverse depth), so the correction follows objects and surfaces.
The family grows with the number of anchors (`basis_set.tier_for`); `BasisSet.signature` names the family so the
temporal filter can tell when the weights no longer mean the same thing and must reset.
PCA signs are fixed by correlation with relative depth, so the same scene gives the same bases.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from .backbone import BackboneOutput, DepthKind
from .basis_set import BasisConfig, BasisSet, restrict, tier_for
from .graph_backbone import BASES_OUTPUT
from .tier_selection import select_tier


def relative_inverse_depth(out: BackboneOutput) -> tuple[np.ndarray, float, bool]:
    """Positive finite relative inverse depth normalised to median 1, the median removed, and a flag for
    a relative map without usable structure (constant, or no valid pixel). Invalid pixels get the median.

    The median is taken on a regular subsample (every 4th row and column): it only fixes the units of g,
    which the fitted scale absorbs, so the exact full-resolution median would buy nothing but time."""
    rel = np.asarray(out.relative, np.float32)
    lo, hi = float(rel.min()), float(rel.max())  # NaN anywhere makes both NaN
    if lo > 0 and np.isfinite(hi):
        return _relative_inverse_depth_valid(rel, out.kind, hi <= lo * (1.0 + 1e-4))
    valid = np.isfinite(rel) & (rel > 0)
    if not valid.any():
        return np.ones(rel.shape, np.float32), 1.0, True
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(valid, 1.0 / rel, 0.0) if out.kind is DepthKind.DEPTH else np.where(valid, rel, 0.0)
    inv = inv.astype(np.float32)
    good = valid & np.isfinite(inv) & (inv > 0)
    # the median over the valid pixels of the fast path's subsample (at full resolution a map with invalid pixels,
    # such as Depth Anything's zero disparity in the sky, took ~10 ms more a KITTI frame); none there: no structure
    sample = inv[::4, ::4][good[::4, ::4]]
    med = float(np.median(sample)) if sample.size else np.nan
    if not (np.isfinite(med) and med > 0):
        return np.ones(rel.shape, np.float32), 1.0, True
    g = np.where(good, inv / np.float32(med), np.float32(1.0)).astype(np.float32, copy=False)
    # bound extreme values: a few near-zero depths must not dominate the fit
    np.clip(g, 1e-3, 1e3, out=g)
    lo_inv = float(np.min(inv, where=good, initial=np.inf))
    hi_inv = float(np.max(inv, where=good, initial=0.0))
    return g, med, not hi_inv > lo_inv * (1.0 + 1e-4)  # constant, as the fast path tests it


def _relative_inverse_depth_valid(rel: np.ndarray, kind: DepthKind, constant: bool) -> tuple[np.ndarray, float, bool]:
    """Fast path of `relative_inverse_depth` for a map that is positive and finite everywhere."""
    sub = rel[::4, ::4]
    med_rel = float(np.median(sub))
    if kind is DepthKind.DEPTH:
        med = 1.0 / med_rel  # the median of 1/x is 1/median(x)
        g = np.divide(np.float32(med_rel), rel)  # inv / med = med_rel / rel
    else:
        med = med_rel
        g = rel * np.float32(1.0 / med_rel)
    np.clip(g, 1e-3, 1e3, out=g)
    return g, med, constant


def working_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    h, w = shape
    s = min(1.0, long_side / max(h, w))
    return max(2, int(round(h * s))), max(2, int(round(w * s)))


def build_bases(out: BackboneOutput, config: BasisConfig, n_anchors: int, anchors=None) -> BasisSet:
    """The basis family for `n_anchors` anchors (see the module doc). With `anchors` (sanitized Anchors)
    and `config.select`, the tier is then chosen among scale only .. the count's tier by cross-validation
    on the anchors (`select_tier`), so clustered or few anchors get a family they can support."""
    g, med, constant = relative_inverse_depth(out)
    full = graph_family(out, config, g, med, constant)
    if full is None:  # no graph built the maps (`scale-field export --bases analytic`): build the count's tier
        h, w = working_shape(g.shape, config.work_long_side)
        g_work = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA)
        full = _build_family(out, config, tier_for(n_anchors, config), constant, g, g_work, np.log(g_work), med)
    return family_for_anchors(full, config, n_anchors, anchors)


def family_for_anchors(full: BasisSet, config: BasisConfig, n_anchors: int, anchors=None) -> BasisSet:
    """From a frame's family of at least the count's tier: that tier, then (with `anchors` and
    `config.select`) the cross-validated choice for the anchors, which remembers the family it was cut from."""
    tier = tier_for(n_anchors, config)
    family = full if tier == full.tier else restrict(full, tier, "count")
    if anchors is None or not config.select or len(anchors) == 0:
        return family
    chosen = select_tier(family, anchors, config)
    same = chosen.maps is family.maps and chosen.inv_rel is family.inv_rel
    return chosen if same else dataclasses.replace(chosen, family=family)


def _build_family(out, config, tier, constant, g, g_work, log_g, med) -> BasisSet:
    h, w = g_work.shape
    degree = min(config.poly_degree, 1 if tier == 1 else config.poly_degree) if tier >= 1 else 0
    position = position_maps((h, w), degree)
    maps = list(position.maps)
    names = list(position.names)
    if tier >= 2 and not constant and config.depth_bins >= 2:
        maps.extend(depth_partition(log_g, config.depth_bins))
        names.extend(f"depth{i}" for i in range(config.depth_bins))
    if tier >= 3 and not constant and config.feature_components > 0:
        comps = feature_components(out, config, log_g)
        maps.extend(comps)
        names.extend(f"pca{i}" for i in range(len(comps)))
    stack = np.stack(maps).astype(np.float32, copy=False)  # its parts are float32: no second copy
    n_pos = len(position.maps)  # position maps come normalised
    if len(stack) > n_pos:
        rest = stack[n_pos:].reshape(len(stack) - n_pos, -1)
        rms = np.sqrt(np.einsum("kp,kp->k", rest, rest) / rest.shape[1])
        rest /= np.maximum(rms, 1e-6).astype(np.float32)[:, None]
    return BasisSet(stack, tuple(names), g, g_work.astype(np.float32), med, constant, tier, "count")


def graph_family(out: BackboneOutput, config: BasisConfig, g, med: float, constant: bool) -> BasisSet | None:
    """The full family (tier 3) from a graph's `bases` output in `out.features`, or None without one, or when
    the graph was exported with other basis settings than `config`'s (then with a warning, once).

    The graph built the maps from its relative output at the network's resolution; g (the camera-resolution
    map, `relative_inverse_depth`) is shrunk to their size, so that inv_rel and inv_rel_work share units."""
    maps = out.features.get(BASES_OUTPUT)
    if maps is None or maps.ndim != 3:
        return None
    if out.graph_basis_config != config.maps_signature():
        _warn_graph_config(out.graph_basis_config, config.maps_signature())
        return None
    fmap = pick_feature(out, config.feature_name) if config.feature_components > 0 else None
    names = list(position_maps((2, 2), config.poly_degree).names)
    n_pos = len(names)
    names += [f"depth{i}" for i in range(config.depth_bins)] if config.depth_bins >= 2 else []
    names += [f"pca{i}" for i in range(min(config.feature_components, 0 if fmap is None else fmap.shape[0]))]
    if maps.shape[0] != len(names):
        return None
    maps = np.asarray(maps, np.float32)
    # as `_build_family`: no depth or PCA maps without depth structure; zero maps (a negligible component) dropped
    keep = np.arange(len(names)) < n_pos
    if not constant:
        keep |= np.abs(maps).reshape(len(names), -1).max(axis=1) > 0
    h, w = maps.shape[1:]
    g_work = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    names_kept = tuple(n for n, k in zip(names, keep, strict=True) if k)
    return BasisSet(np.ascontiguousarray(maps[keep]), names_kept, g, g_work, med, constant, 3, "count")


@functools.lru_cache(maxsize=8)
def _warn_graph_config(graph: str, wanted: str) -> None:
    """Once per pair: the graph's bases are ignored (and built here) because its settings differ."""
    import warnings

    warnings.warn(
        f"the backbone graph's bases were exported with basis settings [{graph or 'unknown'}], the pipeline asks for "
        f"[{wanted}]: building the bases on the CPU instead (re-export with matching settings to use the graph's)",
        stacklevel=3,
    )


@dataclass(frozen=True)
class PositionMaps:
    """Constant and monomials of normalised image position at one working size, each scaled to unit RMS
    (the constant stays 1). They depend on the size only, so they are built once and shared (read-only)."""

    maps: tuple[np.ndarray, ...]
    names: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def position_maps(work_shape: tuple[int, int], degree: int) -> PositionMaps:
    h, w = work_shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    xn = (x + 0.5) / w * 2.0 - 1.0
    yn = (y + 0.5) / h * 2.0 - 1.0
    maps = [np.ones((h, w), np.float32)]
    names = ["const"]
    for total in range(1, degree + 1):
        for py in range(total + 1):
            m = (xn ** (total - py) * yn**py).astype(np.float32)
            maps.append(m / max(float(np.sqrt(np.mean(m**2))), 1e-6))
            names.append(f"x{total - py}y{py}")
    for m in maps:
        m.setflags(write=False)
    return PositionMaps(tuple(maps), tuple(names))


def depth_partition(log_g: np.ndarray, bins: int) -> list[np.ndarray]:
    """Soft partition of unity over log relative inverse depth: hat functions centred on quantiles."""
    sub = log_g[::2, ::2] if log_g.ndim == 2 and min(log_g.shape) >= 8 else log_g  # quantiles need no more
    centres = np.quantile(sub, (np.arange(bins) + 0.5) / bins)
    centres = np.maximum.accumulate(centres + np.arange(bins) * 1e-4)
    return list(_hats(np.ascontiguousarray(log_g, np.float32), centres))


@njit(cache=True, nogil=True)
def _hats(log_g, centres):
    """(bins, h, w) hat functions of position t along the centres (t = i at centre i, linear between,
    clamped at the ends): each pixel is split between the two hats around its t, in one pass."""
    bins = centres.size
    h, w = log_g.shape
    out = np.zeros((bins, h, w), np.float32)
    for r in range(h):
        for c in range(w):
            x = log_g[r, c]
            if x <= centres[0]:
                out[0, r, c] = 1.0
                continue
            if x >= centres[bins - 1]:
                out[bins - 1, r, c] = 1.0
                continue
            j = 0
            while x >= centres[j + 1]:
                j += 1
            frac = (x - centres[j]) / (centres[j + 1] - centres[j])
            out[j, r, c] = 1.0 - frac
            out[j + 1, r, c] = frac
    return out


def pick_feature(out: BackboneOutput, name: str) -> np.ndarray | None:
    """The feature map named `name`, or ("") the finest with at least 8 channels; a graph's basis outputs
    (`graph_backbone.BASIS_OUTPUTS`, a basis head's maps) are not features."""
    from .graph_backbone import BASIS_OUTPUTS, LEARNED_BASES_OUTPUT

    if name:
        return out.features.get(name)
    best = None
    for key, fmap in out.features.items():
        if key in BASIS_OUTPUTS or key == LEARNED_BASES_OUTPUT:
            continue
        if fmap.shape[0] >= 8 and (best is None or fmap.shape[1] * fmap.shape[2] > best.shape[1] * best.shape[2]):
            best = fmap
    return best


def finite_float32(a: np.ndarray) -> np.ndarray:
    """A feature map as contiguous float32 with non-finite values zeroed (what the analytic and the learned bases
    take): `np.nan_to_num`'s default turns inf into float32's largest value, and one such value made the feature
    components' PCA fail (ValueError) or, in a learned head, every map NaN."""
    a = np.ascontiguousarray(a, np.float32)
    return a if np.isfinite(a).all() else np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def feature_components(out: BackboneOutput, config: BasisConfig, log_g_work: np.ndarray) -> list[np.ndarray]:
    """Leading principal components of a feature map, sign-fixed, guided-upsampled to working resolution."""
    fmap = pick_feature(out, config.feature_name)
    if fmap is None:
        return []
    fmap = finite_float32(fmap)
    h, w = log_g_work.shape
    fmap = pool_feature(fmap, (h, w))
    c, fh, fw = fmap.shape
    x = fmap.reshape(c, -1)
    x = x - x.mean(axis=1, keepdims=True)
    cov = (x @ x.T).astype(np.float64) / max(x.shape[1] - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    k = min(config.feature_components, c)
    order = np.argsort(evals)[::-1][:k]
    if evals[order[0]] <= 1e-12:
        return []
    order = order[evals[order] > 1e-9 * evals[order[0]]]
    comps = (evecs[:, order].T.astype(np.float32) @ x).reshape(len(order), fh, fw)
    guide = np.asarray(log_g_work, np.float32)
    guide_small = cv2.resize(guide, (fw, fh), interpolation=cv2.INTER_AREA)
    centred = guide_small.ravel() - guide_small.mean()
    signs = np.where(comps.reshape(len(order), -1) @ centred < 0, -1.0, 1.0).astype(np.float32)  # deterministic
    # all components in one multi-channel image, one fast guided filter for all of them
    stacked = np.ascontiguousarray((comps * signs[:, None, None]).transpose(1, 2, 0))
    maps = guided_upsample(guide, stacked, config.guided_radius, config.guided_eps, guide_small)
    maps -= maps.mean(axis=(1, 2), keepdims=True)
    return list(maps)


def feature_pool_factor(feature_hw: tuple[int, int], work_hw: tuple[int, int]) -> int:
    """Block size by which the feature map is mean-pooled before the PCA and the guided filter's fit: the
    smallest integer that brings it to at most half the working size (1: kept). Finer features add cost, not
    detail: the guided filter takes the edges from the relative depth."""
    ratio = max(feature_hw[0] / max(work_hw[0] // 2, 1), feature_hw[1] / max(work_hw[1] // 2, 1))
    return max(1, int(np.ceil(ratio - 1e-9)))


def pool_feature(fmap: np.ndarray, work_hw: tuple[int, int]) -> np.ndarray:
    """C x h' x w' feature map mean-pooled in f x f blocks (`feature_pool_factor`; a partial last block is
    dropped, as torch's avg_pool2d does)."""
    c, fh, fw = fmap.shape
    f = feature_pool_factor((fh, fw), work_hw)
    if f == 1:
        return fmap
    ph, pw = fh // f, fw // f
    crop = fmap[:, : ph * f, : pw * f]
    # cv2's area shrink by a whole factor is the block mean, and per 2-D channel its fast path (~3 us each)
    return np.stack([cv2.resize(ch, (pw, ph), interpolation=cv2.INTER_AREA) for ch in crop])


def guided_upsample(
    guide: np.ndarray, src_small: np.ndarray, radius: int, eps: float, guide_small: np.ndarray | None = None
) -> np.ndarray:
    """Fast guided filter (He and Sun 2015): the guided filter's linear coefficients a, b are fitted at the
    resolution of `src_small` (h' x w' x C) against the guide shrunk to it (`guide_small` when the caller has
    it), then upsampled and applied to the full guide (h x w): edges of the guide, at the cost of the small
    image. Returns C x h x w float32 (as the torch version, `bases_torch.guided_upsample`)."""
    h, w = guide.shape
    sh, sw, c = src_small.shape
    if guide_small is None:
        guide_small = cv2.resize(guide, (sw, sh), interpolation=cv2.INTER_AREA)
    r_small = max(1, int(round(radius * sw / w)))
    ksize = (2 * r_small + 1, 2 * r_small + 1)

    def box(a):
        return cv2.boxFilter(a, -1, ksize, borderType=cv2.BORDER_REFLECT).reshape(a.shape)

    def channels(a):
        # the grey guide's statistics repeated over the C channels: between same-shaped arrays numpy's inner
        # loops run over whole rows; against a broadcast length-1 channel axis they are C long, several times slower
        return np.repeat(a[:, :, None], c, axis=2)

    mean_i = box(guide_small)
    var_i = channels(box(guide_small * guide_small) - mean_i * mean_i)
    mean_i = channels(mean_i)
    mean_p = box(src_small)
    cov_ip = box(src_small * channels(guide_small)) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    a_up = cv2.resize(box(a), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c).transpose(2, 0, 1)
    b_up = cv2.resize(box(b), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c).transpose(2, 0, 1)
    out = np.multiply(a_up, guide, out=np.empty((c, h, w), np.float32))  # C-ordered (order 'K' would keep HWC)
    out += b_up
    return out


BASIS_SOURCES = ("analytic", "learned")


def bases_provider(config: BasisConfig, backbone_name: str | None, warn=None):
    """The function that builds a frame's bases: `build_bases`, or a learned head when configured.

    A learned source without a checkpoint falls back to the analytic bases with a warning (`warn`, default
    `warnings.warn`); a checkpoint for another backbone or a corrupt file raises basis_head.CheckpointError.
    """
    if config.source not in BASIS_SOURCES:
        raise ValueError(f"basis source must be one of {BASIS_SOURCES}, got {config.source!r}")
    if config.source == "analytic":
        return build_bases
    if not config.checkpoint:
        import warnings

        (warn or warnings.warn)("basis source 'learned' without a checkpoint: using the analytic bases")
        return build_bases
    from .basis_head import LearnedBases  # torch: imported only when a learned head is asked for

    return LearnedBases.from_checkpoint(config.checkpoint, backbone_name)
