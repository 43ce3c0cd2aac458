"""The analytic basis family of `bases.py` in torch: batched, on any device, exportable to ONNX.

Builds the largest family `bases._build_family` builds (tier 3: constant, position monomials, soft depth
partitions, guided-upsampled feature PCA) from the relative map and one feature map, with the numpy module's
math, so the GPU path can build bases next to the backbone and an exported graph can contain them. The numpy
module stays the reference (`test/test_bases_torch.py` compares the two on real frames). What differs, and why:
- resizes (cv2 INTER_AREA / INTER_LINEAR) are exact: each is separable and linear, so it is applied as two
  small matrices read off cv2 itself (`resize_matrices`), not approximated by pooling;
- the feature covariance's leading eigenvectors come from power iterations on repeatedly squared, deflated
  matrices (no `torch.linalg.eigh`, which ONNX lacks); eigenvalues that are nearly equal give an ill-defined
  eigenvector in numpy too, and there the two may differ;
- the family keeps a fixed size K (a batch and a graph need one): maps numpy would leave out (a relative map
  without structure, a negligible component) come out as zeros, and `TorchBasisMaps.basis_set` drops them.
Smaller tiers and the cross-validated tier choice are column subsets of this family, taken in numpy
(`bases.family_for_anchors`) by `TorchAnalyticBases`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .anchors import Anchors
from .backbone import BackboneOutput, DepthKind
from .bases import family_for_anchors, feature_pool_factor, pick_feature, position_maps, working_shape
from .basis_head import box_filter
from .basis_set import BasisConfig, BasisSet
from .field_torch import masked_median

FULL_TIER = 3
POWER_SQUARINGS = 5  # each component: power iterations on the deflated covariance raised to 2^5 ...
POWER_ITERATIONS = 6  # ... i.e. an effective power of 192


@dataclass(frozen=True)
class TorchBasisMaps:
    """The full analytic family of a batch of frames (the torch `BasisSet` before tier selection).

    maps (B, K, h, w): position maps, then depth bins, then PCA maps, as `bases._build_family` at tier 3.
    names: one per map. inv_rel (B, H, W) and inv_rel_work (B, h, w): relative inverse depth normalised to
    median 1; scale_inv_rel (B,): the median divided out; constant_relative (B,) bool; kept (B, K) bool: maps
    numpy would build (False: a zero map left in to keep K fixed).
    """

    maps: torch.Tensor
    names: tuple[str, ...]
    inv_rel: torch.Tensor
    inv_rel_work: torch.Tensor
    scale_inv_rel: torch.Tensor
    constant_relative: torch.Tensor
    kept: torch.Tensor

    def basis_set(self, index: int = 0) -> BasisSet:
        """Frame `index` as the numpy `BasisSet` of tier 3 (float32 arrays on the CPU)."""
        keep = self.kept[index].cpu().numpy()
        maps = self.maps[index].detach().float().cpu().numpy()[keep]
        names = tuple(n for n, k in zip(self.names, keep, strict=True) if k)
        return BasisSet(
            np.ascontiguousarray(maps),
            names,
            self.inv_rel[index].detach().float().cpu().numpy(),
            self.inv_rel_work[index].detach().float().cpu().numpy(),
            float(self.scale_inv_rel[index]),
            bool(self.constant_relative[index]),
            FULL_TIER,
            "count",
        )


def family_names(config: BasisConfig, feature_channels: int) -> tuple[str, ...]:
    """Names of the full family for a feature map of `feature_channels` channels (0: none)."""
    names = list(position_maps((2, 2), config.poly_degree).names)
    if config.depth_bins >= 2:
        names += [f"depth{i}" for i in range(config.depth_bins)]
    names += [f"pca{i}" for i in range(min(config.feature_components, feature_channels))]
    return tuple(names)


# ------------------------------------------------------------------------------------- relative depth


def relative_inverse_depth(relative: torch.Tensor, kind: DepthKind) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched `bases.relative_inverse_depth`: relative (B, H, W) -> g (B, H, W), median (B,), constant (B,).

    Both of numpy's paths are computed and chosen per frame (no data-dependent branch, so it exports):
    a map positive and finite everywhere takes its median on every 4th row and column; one with invalid
    pixels takes it over the valid ones among those, and its invalid pixels get the median."""
    b = relative.shape[0]
    rel = relative.reshape(b, -1)
    valid = torch.isfinite(rel) & (rel > 0)
    all_valid = valid.all(dim=-1)
    depth = kind is DepthKind.DEPTH
    # fast path (`_relative_inverse_depth_valid`)
    sub = relative[:, ::4, ::4].reshape(b, -1)
    med_rel = masked_median(sub, torch.ones_like(sub, dtype=torch.bool)).clamp_min(torch.finfo(rel.dtype).tiny)
    safe = torch.where(valid, rel, torch.ones_like(rel))
    g_fast = med_rel[:, None] / safe if depth else safe / med_rel[:, None]
    med_fast = 1.0 / med_rel if depth else med_rel
    lo = torch.where(valid, rel, torch.full_like(rel, torch.inf)).amin(-1)
    hi = torch.where(valid, rel, torch.full_like(rel, -torch.inf)).amax(-1)
    constant_fast = hi <= lo * (1.0 + 1e-4)
    g_fast = g_fast.clamp(1e-3, 1e3)
    if not torch.compiler.is_exporting() and bool(all_valid.all()):
        return g_fast.reshape(relative.shape), med_fast, constant_fast  # eager, every map valid: skip the sort
    # masked path
    inv = 1.0 / safe if depth else safe
    good = valid & torch.isfinite(inv) & (inv > 0)
    h, w = relative.shape[1:]
    sub_inv = inv.reshape(b, h, w)[:, ::4, ::4].reshape(b, -1)
    sub_good = good.reshape(b, h, w)[:, ::4, ::4].reshape(b, -1)
    med_masked = masked_median(sub_inv, sub_good)
    usable = sub_good.any(-1) & torch.isfinite(med_masked) & (med_masked > 0)
    med_masked = torch.where(usable, med_masked, torch.ones_like(med_masked))
    g_masked = torch.where(good, inv / med_masked[:, None], torch.ones_like(inv)).clamp(1e-3, 1e3)
    lo_inv = torch.where(good, inv, torch.full_like(inv, torch.inf)).amin(-1)
    hi_inv = torch.where(good, inv, torch.zeros_like(inv)).amax(-1)
    constant_masked = ~usable | (hi_inv <= lo_inv * (1.0 + 1e-4))
    g = torch.where(all_valid[:, None], g_fast, g_masked)
    med = torch.where(all_valid, med_fast, med_masked)
    constant = (all_valid & constant_fast) | (~all_valid & constant_masked)  # ONNX Runtime has no bool Where
    return g.reshape(relative.shape), med, constant


# ------------------------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=64)
def resize_matrices(
    in_hw: tuple[int, int], out_hw: tuple[int, int], interpolation: int
) -> tuple[np.ndarray, np.ndarray]:
    """(A_h (h, H), A_w (w, W)) float64 with A_h @ X @ A_w.T == cv2.resize(X, (w, h), interpolation) for H x W X.

    cv2's INTER_AREA and INTER_LINEAR are separable linear maps, so the weights are read off cv2 itself: by
    resizing an identity along one axis, or, for INTER_AREA shrinking one axis and enlarging the other (where
    cv2 leaves its area path and its weights depend on both axes), by resizing row and column impulses."""
    (h_in, w_in), (h, w) = in_hw, out_hw
    mixed = interpolation == cv2.INTER_AREA and (h <= h_in) != (w <= w_in)
    if not mixed:
        a_h = cv2.resize(np.eye(h_in), (h_in, h), interpolation=interpolation)
        a_w = cv2.resize(np.eye(w_in), (w_in, w), interpolation=interpolation)
    else:
        a_h = _impulse_weights(h_in, w_in, (w, h), interpolation, rows=True)
        a_w = _impulse_weights(w_in, h_in, (w, h), interpolation, rows=False)
    for a in (a_h, a_w):
        a.setflags(write=False)
    return a_h, a_w


def _impulse_weights(n: int, other: int, size_wh: tuple[int, int], interpolation: int, rows: bool) -> np.ndarray:
    """Weights of one axis: cv2.resize of images that are 1 on one row (rows) or column, in channel chunks."""
    cols = []
    for start in range(0, n, 128):  # cv2 takes at most 128 channels here
        idx = np.arange(start, min(n, start + 128))
        img = np.zeros((n, other, len(idx)) if rows else (other, n, len(idx)))
        if rows:
            img[idx, :, np.arange(len(idx))] = 1.0
        else:
            img[:, idx, np.arange(len(idx))] = 1.0
        out = cv2.resize(img, size_wh, interpolation=interpolation).reshape(size_wh[1], size_wh[0], len(idx))
        cols.append(out[:, 0, :] if rows else out[0, :, :])  # every column (row) holds the same weights
    return np.concatenate(cols, axis=1)


def resize(x: torch.Tensor, size_hw: tuple[int, int], interpolation: int = cv2.INTER_AREA) -> torch.Tensor:
    """(..., H, W) -> (..., h, w) as cv2.resize with `interpolation` (INTER_AREA or INTER_LINEAR)."""
    h_in, w_in = (int(s) for s in x.shape[-2:])
    h, w = (int(s) for s in size_hw)
    if (h_in, w_in) == (h, w):
        return x
    if h_in % h == 0 and w_in % w == 0 and interpolation == cv2.INTER_AREA:  # whole blocks: mean pooling
        lead = x.shape[:-2]
        pooled = F.avg_pool2d(x.reshape(-1, 1, h_in, w_in), (h_in // h, w_in // w))
        return pooled.reshape(*lead, h, w)
    m_h, m_w = resize_matrices((h_in, w_in), (h, w), interpolation)
    a_h = torch.tensor(m_h, dtype=x.dtype, device=x.device)
    a_w = torch.tensor(m_w, dtype=x.dtype, device=x.device)
    return a_h @ x @ a_w.T


# ---------------------------------------------------------------------------------------------- maps


def position_tensor(work_shape: tuple[int, int], degree: int, dtype, device) -> torch.Tensor:
    """(P, h, w) `bases.position_maps` (built once in numpy, they depend on the size only)."""
    return torch.tensor(np.stack(position_maps(tuple(work_shape), degree).maps), dtype=dtype, device=device)


def _quantiles(x: torch.Tensor, qs: np.ndarray) -> torch.Tensor:
    """(B, Q) linear-interpolated quantiles of (B, N) rows, as np.quantile."""
    n = x.shape[-1]
    srt = torch.sort(x, dim=-1).values
    pos = np.asarray(qs, np.float64) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = torch.as_tensor(pos - lo, dtype=x.dtype, device=x.device)
    a = srt[:, torch.as_tensor(lo, device=x.device)]
    b = srt[:, torch.as_tensor(hi, device=x.device)]
    return a + (b - a) * frac


def depth_partition(log_g: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, bins, h, w) `bases.depth_partition`: hat functions on log g centred on its quantiles."""
    bsz, h, w = log_g.shape
    sub = log_g[:, ::2, ::2] if min(h, w) >= 8 else log_g
    centres = _quantiles(sub.reshape(bsz, -1), (np.arange(bins) + 0.5) / bins)
    centres = centres + torch.arange(bins, dtype=log_g.dtype, device=log_g.device) * 1e-4
    cols = [centres[:, 0]]
    for i in range(1, bins):  # running maximum (np.maximum.accumulate)
        cols.append(torch.maximum(cols[-1], centres[:, i]))
    c = [col[:, None, None] for col in cols]
    # np.interp(log_g, centres, 0..bins-1) clamped at the ends: a sum of clamped ramps, one per interval
    t = sum(((log_g - c[i]) / (c[i + 1] - c[i])).clamp(0.0, 1.0) for i in range(bins - 1))
    return torch.stack([(1.0 - (t - i).abs()).clamp_min(0.0) for i in range(bins)], dim=1)


def leading_components(cov: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k, C) leading eigenvectors and (B, k) eigenvalues of symmetric PSD (B, C, C), in decreasing order.

    For each component: the covariance, deflated by the ones found, is squared POWER_SQUARINGS times
    (normalised by its trace) and power-iterated from a fixed start; its eigenvalue is the Rayleigh quotient.
    """
    bsz, c, _ = cov.shape
    start = torch.as_tensor(
        np.random.default_rng(0).standard_normal(c) + 1.0, dtype=cov.dtype, device=cov.device
    ).expand(bsz, c)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(cov.dtype).tiny)
    m = cov / scale[:, None, None]
    vecs, vals = [], []
    for _ in range(k):
        p = m
        for _ in range(POWER_SQUARINGS):
            p = p @ p
            p = p / torch.diagonal(p, dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(p.dtype).tiny)[:, None, None]
        v = start
        for _ in range(POWER_ITERATIONS):
            v = (p @ v[..., None])[..., 0]
            v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        for u in vecs:  # re-orthogonalise against the found ones (round-off of the deflation)
            v = v - (v * u).sum(-1, keepdim=True) * u
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        lam = ((m @ v[..., None])[..., 0] * v).sum(-1)
        m = m - lam[:, None, None] * v[:, :, None] * v[:, None, :]
        vecs.append(v)
        vals.append(lam * scale)
    return torch.stack(vecs, dim=1), torch.stack(vals, dim=1)


def guided_upsample(guide: torch.Tensor, src_small: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Batched `bases.guided_upsample`: guide (B, h, w), src_small (B, C, h', w') -> (B, C, h, w)."""
    h, w = guide.shape[-2:]
    sh, sw = src_small.shape[-2:]
    guide_small = resize(guide, (sh, sw))[:, None]
    r_small = max(1, int(round(radius * sw / w)))
    mean_i = box_filter(guide_small, r_small)
    var_i = box_filter(guide_small * guide_small, r_small) - mean_i * mean_i
    mean_p = box_filter(src_small, r_small)
    cov_ip = box_filter(src_small * guide_small, r_small) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    a_up = resize(box_filter(a, r_small), (h, w), cv2.INTER_LINEAR)
    b_up = resize(box_filter(b, r_small), (h, w), cv2.INTER_LINEAR)
    return a_up * guide[:, None] + b_up


def feature_components(
    feature: torch.Tensor, log_g_work: torch.Tensor, config: BasisConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched `bases.feature_components`: feature (B, C, h', w') -> maps (B, k, h, w) and kept (B, k) bool
    (False where numpy keeps no component: negligible variance; those maps are zero)."""
    feature = torch.nan_to_num(feature.to(log_g_work.dtype), nan=0.0, posinf=0.0, neginf=0.0)
    pool = feature_pool_factor(tuple(feature.shape[-2:]), tuple(log_g_work.shape[-2:]))
    feature = F.avg_pool2d(feature, pool) if pool > 1 else feature  # as `bases.pool_feature`
    bsz, c, fh, fw = feature.shape
    k = min(config.feature_components, c)
    x = feature.reshape(bsz, c, -1)
    x = x - x.mean(dim=-1, keepdim=True)
    cov = (x @ x.transpose(1, 2)) / max(x.shape[-1] - 1, 1)
    vecs, vals = leading_components(cov, k)
    top = vals[:, :1]
    kept = (top > 1e-12) & (vals > 1e-9 * top)
    comps = (vecs @ x) * kept[..., None].to(x.dtype)  # (B, k, N)
    guide_small = resize(log_g_work, (fh, fw)).reshape(bsz, 1, -1)
    guide_small = guide_small - guide_small.mean(dim=-1, keepdim=True)
    signs = torch.where((comps * guide_small).sum(-1) < 0, -1.0, 1.0).to(x.dtype)  # deterministic signs
    up = guided_upsample(
        log_g_work, (comps * signs[..., None]).reshape(bsz, k, fh, fw), config.guided_radius, config.guided_eps
    )
    return up - up.mean(dim=(-2, -1), keepdim=True), kept


def analytic_bases(
    relative: torch.Tensor,
    kind: DepthKind,
    feature: torch.Tensor | None,
    config: BasisConfig = BasisConfig(),  # noqa: B008 - frozen
    dtype: torch.dtype = torch.float32,
) -> TorchBasisMaps:
    """The full analytic family (`bases._build_family` at tier 3) of a batch.

    relative (B, H, W) (or (H, W)) at the camera's resolution, of `kind`; feature (B, C, h', w') (or
    (C, h', w')), the map `bases.pick_feature` picks, or None. Computed in `dtype` on relative's device.
    """
    if relative.dim() == 2:
        relative = relative[None]
    if feature is not None and feature.dim() == 3:
        feature = feature[None]
    relative = relative.to(dtype)
    bsz = relative.shape[0]
    g, med, constant = relative_inverse_depth(relative, kind)
    h, w = working_shape(tuple(relative.shape[-2:]), config.work_long_side)
    g_work = resize(g, (h, w))
    log_g = torch.log(g_work)
    position = position_tensor((h, w), config.poly_degree, dtype, relative.device).expand(bsz, -1, -1, -1)
    extra, kept = [], [torch.ones(bsz, position.shape[1], dtype=torch.bool, device=relative.device)]
    structured = ~constant[:, None]
    if config.depth_bins >= 2:
        extra.append(depth_partition(log_g, config.depth_bins))
        kept.append(structured.expand(bsz, config.depth_bins))
    n_feat = 0
    if feature is not None and config.feature_components > 0:
        comps, comp_kept = feature_components(feature, log_g, config)
        extra.append(comps)
        kept.append(structured & comp_kept)
        n_feat = feature.shape[1]
    kept_all = torch.cat(kept, dim=1)
    maps = position
    if extra:
        more = torch.cat(extra, dim=1) * kept_all[:, position.shape[1] :, None, None].to(dtype)
        rms = torch.sqrt((more**2).mean(dim=(-2, -1), keepdim=True))
        maps = torch.cat([position, more / rms.clamp_min(1e-6)], dim=1)
    return TorchBasisMaps(maps, family_names(config, n_feat), g, g_work, med, constant, kept_all)


# ------------------------------------------------------------------------------------------ provider


class TorchAnalyticBases:
    """Basis provider with `bases.build_bases`' signature, building the maps in torch on `device`.

    The full family comes from `analytic_bases`; the tier for the anchor count and the cross-validated
    choice are numpy's (`bases.family_for_anchors`), so a Pipeline given
    `bases_fn=TorchAnalyticBases(...)` runs the numpy pipeline with torch-built maps.
    """

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype

    def full(self, out: BackboneOutput, config: BasisConfig) -> BasisSet:
        """The tier-3 family of one frame, as a numpy `BasisSet`."""
        fmap = pick_feature(out, config.feature_name) if config.feature_components > 0 else None
        with torch.inference_mode():
            rel = torch.as_tensor(np.asarray(out.relative, np.float32), device=self.device)
            feat = None if fmap is None else torch.as_tensor(np.asarray(fmap, np.float32), device=self.device)
            return analytic_bases(rel, out.kind, feat, config, self.dtype).basis_set(0)

    def __call__(
        self, out: BackboneOutput, config: BasisConfig, n_anchors: int, anchors: Anchors | None = None
    ) -> BasisSet:
        return family_for_anchors(self.full(out, config), config, n_anchors, anchors)


class AnalyticBasesModule(nn.Module):
    """The full family as a module for graphs: (relative (B, H, W), feature (B, C, h', w')) ->
    (bases (B, K, h, w), inv_rel_work (B, h, w)). `names` lists the maps."""

    def __init__(self, kind: DepthKind, config: BasisConfig, feature_channels: int) -> None:
        super().__init__()
        self.kind = kind
        self.config = config
        self.names = family_names(config, feature_channels if config.feature_components > 0 else 0)

    def forward(self, relative: torch.Tensor, feature: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        fam = analytic_bases(relative, self.kind, feature, self.config, relative.dtype)
        return fam.maps, fam.inv_rel_work


class GraphWithBases(nn.Module):
    """A backbone graph (image -> relative (B, H, W), feature maps...) with the full analytic family appended:
    outputs (relative, features..., bases (B, K, h, w), inv_rel_work (B, h, w)).

    The bases are built from the graph's own relative output at the network's input resolution (the numpy
    path builds them from the map resized to the camera's), on `feature_index`, the feature output
    `bases.pick_feature` would pick. Shapes are fixed when traced (the resizes are constant matrices), so a
    graph with bases is exported at a fixed input size.
    """

    def __init__(self, graph: nn.Module, kind: DepthKind, config: BasisConfig, feature_index: int | None) -> None:
        super().__init__()
        self.backbone = graph  # not "graph": that name is taken on the exporter's GraphModule
        self.kind = kind
        self.config = config
        self.feature_index = feature_index

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = tuple(self.backbone(image))
        feature = None if self.feature_index is None else outs[1 + self.feature_index]
        fam = analytic_bases(outs[0], self.kind, feature, self.config, torch.float32)
        return (*outs, fam.maps, fam.inv_rel_work)


def with_bases(graph: nn.Module, meta, config: BasisConfig = BasisConfig()):  # noqa: B008 - frozen
    """(`GraphWithBases` around `graph`, its `GraphMeta`) for a graph described by `meta` (without bases).

    The feature is chosen as `bases.pick_feature` chooses, from the outputs of one small forward pass."""
    import dataclasses

    from .graph_backbone import BASIS_OUTPUTS

    side = 2 * meta.multiple
    with torch.no_grad():
        outs = tuple(graph.eval()(torch.zeros(1, 3, side, side)))
    names = meta.feature_names
    features = {n: o[0].numpy() for n, o in zip(names, outs[1:], strict=True)}
    probe = BackboneOutput(outs[0][0].numpy(), meta.kind, meta.metric, features)
    fmap = pick_feature(probe, config.feature_name) if config.feature_components > 0 else None
    index = None
    if fmap is not None:
        index = next(i for i, n in enumerate(names) if features[n] is fmap)
    channels = 0 if index is None else int(outs[1 + index].shape[1])
    basis_names = family_names(config, channels)
    module = GraphWithBases(graph, meta.kind, config, index).eval()
    out_meta = dataclasses.replace(
        meta,
        output_names=(*meta.output_names, *BASIS_OUTPUTS),
        basis_names=basis_names,
        basis_config=config.maps_signature(),
    )
    return module, out_meta
