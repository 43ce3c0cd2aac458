"""Learned basis maps: a light convolutional head from backbone features + relative depth to K basis maps.

The head reads chosen decoder feature maps ("taps") and the log relative inverse depth, and outputs K maps at
the finest tap's resolution; `expand_maps` takes them to the working resolution with a guided filter (guide:
log relative inverse depth, as the analytic PCA bases) and normalises each to zero mean, unit RMS. The
provider `LearnedBases` returns the same `BasisSet` as `bases.build_bases` (constant map first, then the
learned ones), so design, solve, temporal filter and compose are shared with the analytic path.

A checkpoint records the backbone, the taps and their channel counts, K and the head's width; loading it
against a backbone whose features differ is a clear error. `export_fastdepth_with_head` writes one ONNX graph
computing depth, features and the head's maps (output `learned_bases`, with the head's weights digest in the
file's metadata); `LearnedBases` then uses that output directly instead of running the head, when the digest is
its own head's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .anchors import Anchors
from .backbone import BackboneOutput
from .bases import finite_float32, relative_inverse_depth, working_shape
from .basis_set import BasisConfig, BasisSet
from .graph_backbone import LEARNED_BASES_OUTPUT, LEARNED_HEAD_META_KEY
from .hashing import file_sha256

CHECKPOINT_FORMAT = 1
BASES_OUTPUT = LEARNED_BASES_OUTPUT  # graph output name of the head's maps
FASTDEPTH_TAPS = ("dec3", "dec4")  # 120x28x28 and 56x56x56 at FastDepth's 224x224 input


class CheckpointError(ValueError):
    """A head checkpoint that is unreadable, of another format, or trained for another backbone."""


@dataclass(frozen=True)
class HeadSpec:
    """What a head was built for; stored in its checkpoint."""

    backbone: str  # backbone name, e.g. "fastdepth"
    taps: tuple[str, ...]  # feature maps read, finest last or first (the finest sets the output size)
    channels: tuple[int, ...]  # channels of each tap
    k: int  # learned maps (the constant map is added on top)
    hidden: int = 32
    backbone_model_sha256: str = ""  # of the model file the features came from, "" when unknown

    def __post_init__(self) -> None:
        if len(self.taps) != len(self.channels) or not self.taps:
            raise ValueError(f"taps {self.taps} and channels {self.channels} must be non-empty and match")
        if self.k < 1 or self.hidden < 1:
            raise ValueError(f"k and hidden must be >= 1, got {self.k}, {self.hidden}")


class BasisHead(nn.Module):
    """features (list of Bx C_i x h_i x w_i, in `spec.taps` order) + relative inverse depth Bx1xHxW
    -> B x K x h x w maps at the finest tap's resolution, each zero mean and unit RMS."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.hidden
        self.proj = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in spec.channels)
        self.body = nn.Sequential(
            nn.Conv2d(c + 1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, spec.k, 1),
        )

    def forward(self, features: list[torch.Tensor], inv_rel: torch.Tensor) -> torch.Tensor:
        sizes = [tuple(f.shape[-2:]) for f in features]
        out_hw = max(sizes, key=lambda s: s[0] * s[1])
        x = 0
        for proj, f in zip(self.proj, features, strict=True):
            p = proj(f)
            if tuple(p.shape[-2:]) != out_hw:
                p = F.interpolate(p, size=out_hw, mode="bilinear", align_corners=False)
            x = x + p
        # log relative inverse depth, mean removed: invariant to the relative map's unknown scale
        z = torch.log(F.adaptive_avg_pool2d(inv_rel.clamp_min(1e-6), out_hw))
        z = z - z.mean(dim=(2, 3), keepdim=True)
        maps = self.body(torch.cat([F.relu(x), z], dim=1))
        return normalise_maps(maps)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map zero mean, unit RMS over its pixels (B x K x h x w)."""
    maps = maps - maps.mean(dim=(2, 3), keepdim=True)
    return maps / torch.sqrt((maps**2).mean(dim=(2, 3), keepdim=True) + 1e-6)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------ maps to work res


def _reflect_index(n: int, r: int, device) -> torch.Tensor:
    """Indices padding a length-n axis by r on each side, mirrored with the edge repeated (cv2 BORDER_REFLECT)."""
    idx = torch.arange(-r, n + r, device=device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def box_filter(a: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over (2r+1)^2 windows of B x C x h x w, reflected borders (as cv2.boxFilter, BORDER_REFLECT)."""
    if radius <= 0:
        return a
    h, w = a.shape[-2:]
    a = a.index_select(-2, _reflect_index(h, radius, a.device)).index_select(-1, _reflect_index(w, radius, a.device))
    return _window_mean(_window_mean(a, radius, -1), radius, -2)


def _window_mean(a: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Means of 2r+1 consecutive entries along `dim` (length shrinks by 2r), by differences of a running sum:
    separable and independent of r, faster than pooling on the CPU and exportable (ONNX CumSum)."""
    k = 2 * radius + 1
    c = torch.cumsum(a, dim=dim)
    n = a.shape[dim]
    first = c.narrow(dim, k - 1, 1)
    rest = c.narrow(dim, k, n - k) - c.narrow(dim, 0, n - k)
    return torch.cat([first, rest], dim=dim) / k


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter with a grey guide, batched: guide B x 1 x h x w, src B x C x h x w (edges of
    the guide transferred to src)."""
    mean_i, mean_p = box_filter(guide, radius), box_filter(src, radius)
    cov_ip = box_filter(guide * src, radius) - mean_i * mean_p
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_filter(a, radius) * guide + box_filter(b, radius)


def expand_maps(low: torch.Tensor, log_g_work: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Head maps B x K x h0 x w0 -> B x K x h x w at working resolution: bilinear, guided by log g, normalised."""
    h, w = log_g_work.shape[-2:]
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return normalise_maps(guided_filter(log_g_work[:, None], up, radius, eps))


# ------------------------------------------------------------------------------------------ checkpoint


def save_checkpoint(path: str | Path, head: BasisHead, training: dict | None = None) -> Path:
    """Write the head's weights with its `HeadSpec` and a record of its training."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    state = {
        "format": CHECKPOINT_FORMAT,
        "spec": dataclasses.asdict(head.spec),
        "state_dict": weights,
        "state_sha256": state_digest(weights),
        "training": training or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, backbone: str | None = None) -> tuple[BasisHead, dict]:
    """(head in eval mode, training record). `backbone`: the name it must have been trained for."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"basis head checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        d = dict(state["spec"])
        d["taps"] = tuple(d["taps"])
        d["channels"] = tuple(int(c) for c in d["channels"])
        spec = HeadSpec(**d)
        head = BasisHead(spec)
        head.load_state_dict(state["state_dict"])
        # a flipped byte in the weights still loads: the digest written with them says so (older files have none)
        if "state_sha256" in state and state["state_sha256"] != state_digest(state["state_dict"]):
            raise CheckpointError(f"{path}: the weights do not match their digest (the file is damaged)")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} is not a basis head checkpoint: {exc}") from exc
    if backbone is not None and spec.backbone != backbone:
        raise CheckpointError(
            f"{path} was trained for backbone {spec.backbone!r} (taps {', '.join(spec.taps)}), not {backbone!r}"
        )
    return head.eval(), dict(state.get("training", {}))


@functools.lru_cache(maxsize=8)
def _warn_other_head(graph: str, wanted: str) -> None:
    """Once per pair: the graph's learned maps are ignored (the head runs here) because another head made them."""
    warnings.warn(
        f"the backbone graph's {BASES_OUTPUT} come from basis head {graph[:12] or 'unknown'}, the checkpoint's head is "
        f"{wanted[:12]}: running the checkpoint's head on the features instead (re-export the graph with "
        "`export_fastdepth_with_head` to use its maps)",
        stacklevel=4,
    )


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights' names, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_sha256(path: str | Path | None) -> str:
    """The backbone model file's hash for a checkpoint's record; "" when the backbone has no file."""
    if path is None or not Path(path).is_file():
        return ""
    return file_sha256(path)


# ------------------------------------------------------------------------------------------ provider


def tap_tensors(features: dict[str, np.ndarray], spec: HeadSpec) -> list[torch.Tensor]:
    """The head's inputs from a `BackboneOutput.features`, or a `CheckpointError` naming what is missing."""
    out = []
    for name, ch in zip(spec.taps, spec.channels, strict=True):
        f = features.get(name)
        if f is None or f.ndim != 3 or f.shape[0] != ch:
            have = {k: tuple(v.shape) for k, v in features.items()}
            raise CheckpointError(
                f"basis head trained for {spec.backbone!r} needs feature {name!r} with {ch} channels; "
                f"this backbone gives {have}"
            )
        out.append(torch.from_numpy(finite_float32(f))[None])
    return out


class LearnedBases:
    """Basis provider with `build_bases`' signature: (BackboneOutput, BasisConfig, n_anchors, anchors) -> BasisSet."""

    def __init__(self, head: BasisHead, training: dict | None = None) -> None:
        self.head = head.eval()
        self.spec = head.spec
        self.training = training or {}
        self.names = ("const", *(f"learned{i}" for i in range(self.spec.k)))
        self.digest = state_digest(self.head.state_dict())  # a graph's maps are used only if this head made them

    @staticmethod
    def from_checkpoint(path: str | Path, backbone: str | None = None) -> LearnedBases:
        head, training = load_checkpoint(path, backbone)
        return LearnedBases(head, training)

    def low_maps(self, out: BackboneOutput, g: np.ndarray) -> torch.Tensor:
        """1 x K x h0 x w0: the graph's `learned_bases` output when this head computed it, else the head run here
        (a graph exported with another head: once with a warning)."""
        given = out.features.get(BASES_OUTPUT)
        if given is not None:
            if out.learned_bases_head == self.digest and given.ndim == 3 and given.shape[0] == self.spec.k:
                return torch.from_numpy(finite_float32(given))[None]
            _warn_other_head(out.learned_bases_head, self.digest)
        feats = tap_tensors(out.features, self.spec)
        with torch.inference_mode():
            return self.head(feats, torch.from_numpy(g)[None, None])

    def __call__(
        self, out: BackboneOutput, config: BasisConfig, n_anchors: int, anchors: Anchors | None = None
    ) -> BasisSet:
        g, med, constant = relative_inverse_depth(out)
        h, w = working_shape(g.shape, config.work_long_side)
        import cv2

        g_work = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = self.low_maps(out, g)
        with torch.inference_mode():
            maps = expand_maps(low, torch.from_numpy(np.log(g_work))[None], config.guided_radius, config.guided_eps)
        stack = np.concatenate([np.ones((1, h, w), np.float32), maps[0].numpy().astype(np.float32)])
        if constant:  # no depth structure: the learned maps would be noise; keep the constant only
            stack, names = stack[:1], self.names[:1]
        else:
            names = self.names
        return BasisSet(stack, names, g, g_work, med, constant, tier=3)


# ---------------------------------------------------------------------------------------------- export


class FastDepthWithHead(nn.Module):
    """FastDepth + head in one graph: image -> (depth, {dec1..dec5}, learned_bases)."""

    def __init__(self, backbone: nn.Module, head: BasisHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor):
        depth, features = self.backbone(x)
        inv = 1.0 / depth.clamp_min(1e-3)
        maps = self.head([features[t] for t in self.head.spec.taps], inv)
        return depth, features, maps


def export_fastdepth_with_head(model_path: str | Path, checkpoint: str | Path, out: str | Path) -> Path:
    """One ONNX graph computing FastDepth's depth, its decoder features and the head's maps.

    Loads with `load_backbone("fastdepth", out)` (ONNX Runtime); its `learned_bases` output reaches
    `LearnedBases` through `BackboneOutput.features`.
    """
    from .fastdepth import DEPTH_OUTPUT, FEATURE_NAMES, INPUT_SIZE
    from .onnx_export import export_onnx
    from .tflite_weights import load_fastdepth

    head, _ = load_checkpoint(checkpoint, "fastdepth")
    model, _ = load_fastdepth(Path(model_path))
    module = FastDepthWithHead(model.eval(), head)
    names = [DEPTH_OUTPUT, *FEATURE_NAMES, BASES_OUTPUT]
    digest = {LEARNED_HEAD_META_KEY: state_digest(head.state_dict())}  # which head's maps the file computes
    return export_onnx(module, out, (INPUT_SIZE, INPUT_SIZE), names, metadata=digest)
