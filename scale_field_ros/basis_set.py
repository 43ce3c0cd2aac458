"""The basis set of one frame, what flows from `bases` to the solver: the maps B_1..B_K at working resolution
with the relative inverse depth they multiply, the settings that shape them (`BasisConfig`), the nested tiers
of the family and the cuts between them (`tier_for`, `restrict`), and the maps sampled at anchor pixels.
`bases` builds the sets, `tier_selection` chooses among their tiers; both build on this module."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from numba import njit


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
    select: bool = True  # with anchors given: pick the tier (or scale only) by spatially blocked cross-validation
    select_skip_anchors: int = 300  # ... unless this many anchors cover every cell of the 4x4 grid (full family)
    select_tolerance: float = 0.02  # a richer rung must lower the held-out error by this fraction to be chosen
    coverage_penalty: float = 0.5  # ... plus this times (1 - coverage): clustered anchors need stronger evidence
    source: str = "analytic"  # "analytic" (bases.py) or "learned" (a trained basis head, basis_head.py)
    checkpoint: str = ""  # basis head checkpoint for source "learned"

    def maps_signature(self) -> str:
        """The settings that shape the full family's maps: a graph exported with other ones is not used."""
        keys = ("work_long_side", "poly_degree", "depth_bins", "feature_components", "feature_name")
        return ";".join(f"{k}={getattr(self, k)}" for k in keys) + f";guided={self.guided_radius},{self.guided_eps:g}"


@dataclass(frozen=True)
class ScaleOnlyBlend:
    """Scale only (the anchors' `absrel_scale`) averaged into the frame's output (see `select_tier`): its
    weight, its scale s0 (inverse depth s0 * g over the relative map the set was selected on, `BasisSet.family`
    or the set itself) and its held-out relative RMS error (its share of the published std)."""

    weight: float
    scale: float
    rel_rms: float


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
    tier: int  # -1: scale only (shift pinned to 0), 0: scale and shift, 1..3: families of `tier_for`
    selection: str = ""  # how the tier was chosen (count ladder, or the cross-validation errors)
    scale_hint: float = 0.0  # tier -1: the anchors' absrel_scale of (1/depth) / g, which the field then keeps
    coverage: float = 1.0  # how evenly the anchors cover the image (1: like uniform random anchors)
    family: BasisSet | None = None  # the count's full family this set was selected from (None: it is that family)
    blend: ScaleOnlyBlend | None = None  # the frame alone: scale only averaged into the output (`select_tier`)

    @property
    def shift_free(self) -> bool:
        return self.tier >= 0

    @property
    def k(self) -> int:
        return self.maps.shape[0]

    @property
    def full_family(self) -> BasisSet:
        """The count's full family this set was selected from, or the set itself when it is that family."""
        return self.family if self.family is not None else self

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


def tier_for(n_anchors: int, config: BasisConfig) -> int:
    return int(np.searchsorted(np.asarray(config.tier_anchors), n_anchors, side="right"))


@functools.lru_cache(maxsize=64)
def tier_columns(names: tuple[str, ...], tier: int) -> np.ndarray:
    """Indices of the maps of `tier` inside the largest family (tiers are nested); read-only, cached (the
    names are parsed for every candidate of every frame)."""
    if tier <= 0:
        cols = np.array([0])
        cols.setflags(write=False)
        return cols
    keep = []
    for i, n in enumerate(names):
        if n == "const" or (n.startswith("x") and (tier >= 2 or sum(map(int, n[1:].split("y"))) <= 1)):
            keep.append(i)
        elif n.startswith("depth") and tier >= 2:
            keep.append(i)
        elif n.startswith("pca") and tier >= 3:
            keep.append(i)
    cols = np.array(keep)
    cols.setflags(write=False)
    return cols


def restrict(full: BasisSet, tier: int, why: str, scale_hint: float = 0.0) -> BasisSet:
    """The sub-family of `full` for `tier` (-1 and 0 keep only the constant map). Scale only (-1) holds the
    scale at `scale_hint` (`tier_selection.absrel_scale`): a median-type scale is more robust than a
    least-squares fit when anchors are few."""
    hint = float(scale_hint) if tier == -1 else 0.0
    if tier == full.tier:
        return dataclasses.replace(full, selection=why, scale_hint=hint)
    cols = tier_columns(full.names, tier)
    names = tuple(full.names[i] for i in cols)
    return dataclasses.replace(full, maps=full.maps[cols], names=names, tier=tier, selection=why, scale_hint=hint)


def family_for_tier(bases: BasisSet, tier: int) -> BasisSet | None:
    """The family of basis tier `tier` (0 .. 3) for the frame `bases` was built for, cut from the full family it
    was selected from (the same maps `build_bases` would build for that tier), or None when that family is
    smaller than `tier`."""
    full = bases.full_family
    if tier < 0 or tier > full.tier or full.tier < 0:
        return None
    return restrict(full, tier, "held")


def sample_maps(maps: np.ndarray, u: np.ndarray, v: np.ndarray, full_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear samples (N, K) of K x h x w maps at full-resolution pixel coordinates u, v (finite: the compiled
    gather has no bounds check, so a NaN coordinate is refused here; anchors come sanitized)."""
    k, h, w = maps.shape
    fh, fw = full_shape
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError("sample_maps: pixel coordinates must be finite (sanitize the anchors first)")
    x = np.clip((np.asarray(u, np.float64) + 0.5) * (w / fw) - 0.5, 0, w - 1)
    y = np.clip((np.asarray(v, np.float64) + 0.5) * (h / fh) - 0.5, 0, h - 1)
    return _bilinear_at(np.ascontiguousarray(maps), x, y)


@njit(cache=True, nogil=True)
def _bilinear_at(maps, x, y):
    """(N, K) bilinear samples at working-resolution coordinates already clipped to the maps (compiled: with
    numpy it is a gather of 4 x N x K values and an einsum, several times the arithmetic)."""
    k, h, w = maps.shape
    out = np.empty((x.size, k))
    for i in range(x.size):
        x0 = min(int(np.floor(x[i])), w - 2) if w > 1 else 0
        y0 = min(int(np.floor(y[i])), h - 2) if h > 1 else 0
        fx, fy = x[i] - x0, y[i] - y0
        x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
        c00, c10, c01, c11 = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
        for c in range(k):
            m = maps[c]
            out[i, c] = c00 * m[y0, x0] + c10 * m[y0, x1] + c01 * m[y1, x0] + c11 * m[y1, x1]
    return out
