"""`scale-field train`: fit the learned basis head end to end through the per-image ridge solve.

The backbone is frozen, so every training view (the frame, random crops, flips and colour jitter) goes
through it once up front and its features are kept. Each step then draws anchors on a batch of views (uniform,
lidar or vio pattern, 8-1000 anchors log-uniformly, noise and outliers), builds the bases from the head, solves
the weights in torch exactly as the pipeline does (`field_torch.fit_field`: global alignment, then the robust
ridge toward its prior; differentiable), and takes the loss on ground-truth pixels that are not anchors
(relative L1 in inverse depth, or a scale-invariant log loss). Validation after every epoch on fixed anchor
draws, reported next to the analytic bases' loss on the same draws; the best checkpoint is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)
PATTERNS = ("uniform", "lidar", "vio")
LOSSES = ("l1_inv", "silog")


@dataclass(frozen=True)
class TrainConfig:
    k: int = 6
    hidden: int = 32
    taps: tuple[str, ...] = ("dec3", "dec4")
    epochs: int = 10
    steps_per_epoch: int = 40
    batch: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    views_per_frame: int = 4  # the frame itself + augmented copies
    loss: str = "l1_inv"
    loss_pixels: int = 4096
    min_anchors: int = 8
    max_anchors: int = 1000
    max_noise: float = 0.05
    max_outliers: float = 0.1
    seed: int = 0
    noise_rel: float = 0.02  # the pipeline's assumed anchor noise
    min_depth_m: float = 0.1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch < 1 or self.views_per_frame < 1:
            raise ValueError("epochs, steps_per_epoch, batch and views_per_frame must be >= 1")
        if not 1 <= self.min_anchors <= self.max_anchors:
            raise ValueError(f"need 1 <= min_anchors <= max_anchors, got {self.min_anchors}, {self.max_anchors}")


@dataclass(frozen=True)
class View:
    """One (augmented) image with ground truth and its frozen backbone output."""

    frame: object  # datasets.Frame (rgb, depth_m, max_depth_m used)
    out: object  # backbone.BackboneOutput
    taps: tuple  # torch tensors C x h x w
    g: object  # torch H x W relative inverse depth (median 1)
    log_g_work: object  # torch h x w
    scale_inv_rel: float


@dataclass(frozen=True)
class Sample:
    """Anchors and loss pixels of one view for one step."""

    view: View
    u: np.ndarray
    v: np.ndarray
    depth_m: np.ndarray
    weight: np.ndarray
    loss_u: np.ndarray
    loss_v: np.ndarray
    loss_inv: np.ndarray  # ground-truth inverse depth at the loss pixels


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best_val: float
    analytic_val: float
    history: tuple[dict, ...]


# ------------------------------------------------------------------------------------------- views


def augment(frame, rng: np.random.Generator):
    """Random crop (60-100% of each side, aspect kept), horizontal flip, brightness/contrast/saturation."""
    from .camera import Intrinsics

    rgb, depth = frame.rgb, frame.depth_m
    h, w = rgb.shape[:2]
    s = rng.uniform(0.6, 1.0)
    ch, cw = max(32, int(h * s)), max(32, int(w * s))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    rgb, depth = rgb[y0 : y0 + ch, x0 : x0 + cw], depth[y0 : y0 + ch, x0 : x0 + cw]
    k = frame.intrinsics
    cx, cy = k.cx - x0, k.cy - y0
    if rng.random() < 0.5:
        rgb, depth, cx = rgb[:, ::-1], depth[:, ::-1], cw - 1 - cx
    x = rgb.astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + rng.uniform(0.7, 1.3) * (x - grey)  # saturation
    x = x.mean() + rng.uniform(0.75, 1.25) * (x - x.mean()) + rng.uniform(-20, 20)  # contrast, brightness
    rgb = np.clip(x, 0, 255).astype(np.uint8)
    return dataclasses.replace(
        frame,
        rgb=np.ascontiguousarray(rgb),
        depth_m=np.ascontiguousarray(depth),
        intrinsics=Intrinsics(k.fx, k.fy, cx, cy, cw, ch),
        lidar_points=None,
        T_cam_lidar=None,
    )


def make_view(frame, backbone, taps: tuple[str, ...], work_long_side: int) -> View:
    import cv2
    import torch

    from .bases import finite_float32, relative_inverse_depth, working_shape

    out = backbone.infer(frame.rgb)
    g, med, _ = relative_inverse_depth(out)
    h, w = working_shape(g.shape, work_long_side)
    g_work = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA)
    missing = [t for t in taps if t not in out.features]
    if missing:
        raise ValueError(f"backbone {backbone.name!r} has no feature {missing}; it gives {sorted(out.features)}")
    feats = tuple(torch.from_numpy(finite_float32(out.features[t])) for t in taps)
    return View(frame, out, feats, torch.from_numpy(g), torch.from_numpy(np.log(g_work)), float(med))


def load_views(data_dirs, backbone, cfg: TrainConfig, work_long_side: int, rng, augmented: bool) -> list[View]:
    from .datasets import load_dataset

    views = []
    for d in data_dirs:
        ds = load_dataset(d)
        for i in range(len(ds)):
            frame = ds.frame(i)
            if frame.depth_m is None or not (frame.depth_m > 0).any():
                LOG.info("skipping %s/%s: no dense ground truth", ds.name, frame.frame_id)
                continue
            views.append(make_view(frame, backbone, cfg.taps, work_long_side))
            for _ in range(cfg.views_per_frame - 1 if augmented else 0):
                views.append(make_view(augment(frame, rng), backbone, cfg.taps, work_long_side))
    if not views:
        raise ValueError(f"no frames with dense ground truth in {list(map(str, data_dirs))}")
    return views


def draw_sample(view: View, cfg: TrainConfig, rng: np.random.Generator) -> Sample | None:
    """Anchors of a random pattern/density/corruption and the loss pixels (valid GT, not anchors)."""
    from .patterns import draw_anchors

    frame = view.frame
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    n = int(round(np.exp(rng.uniform(np.log(cfg.min_anchors), np.log(cfg.max_anchors)))))
    noise = rng.uniform(0, cfg.max_noise)
    outliers = rng.uniform(0, cfg.max_outliers) if rng.random() < 0.5 else 0.0
    draw = draw_anchors(frame, pattern, n, seed=int(rng.integers(2**31)), noise=noise, outliers=outliers)
    h, w = frame.depth_m.shape
    a = draw.anchors.sanitized(w, h, cfg.min_depth_m, frame.max_depth_m)
    if len(a) < 1:
        return None
    gt = frame.depth_m
    valid = np.isfinite(gt) & (gt > cfg.min_depth_m) & (gt <= frame.max_depth_m)
    valid.ravel()[a.pixel_index(w)] = False
    flat = np.flatnonzero(valid)
    if flat.size == 0:
        return None
    pick = rng.choice(flat, size=min(cfg.loss_pixels, flat.size), replace=False)
    rows, cols = np.divmod(pick, w)
    return Sample(
        view,
        a.u,
        a.v,
        a.depth_m,
        a.weight,
        cols.astype(np.float32),
        rows.astype(np.float32),
        (1.0 / gt.ravel()[pick]).astype(np.float32),
    )


# --------------------------------------------------------------------------------------------- loss


def sample_loss(maps, sample: Sample, cfg: TrainConfig, loss: str):
    """Loss of one view given its full basis stack maps (1 x K x h x w, constant first), differentiable in maps."""
    import torch

    from . import field_torch as ft

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]

    g = sample.view.g[None]
    mask = torch.ones(1, len(sample.u), dtype=torch.bool)
    design = ft.anchor_design(
        maps, g, t(sample.u), t(sample.v), t(sample.depth_m), t(sample.weight), mask, cfg.noise_rel
    )
    fit = ft.fit_field(design, torch.tensor([sample.view.scale_inv_rel]))
    k = maps.shape[1]
    lu, lv = t(sample.loss_u), t(sample.loss_v)
    s = (ft.sample_maps(maps, lu, lv, tuple(g.shape[-2:])) * fit.weights[:, None, :k]).sum(-1)
    pred = s * ft.pixel_values(g, lu, lv) + fit.weights[:, k, None]
    target = t(sample.loss_inv)
    if loss == "l1_inv":
        return (pred - target).abs().mean() / target.mean()
    d = torch.log(pred.clamp_min(1e-4)) - torch.log(target)
    return (d**2).mean() - 0.85 * d.mean() ** 2


def learned_stack(head, samples: list[Sample], basis_cfg) -> list:
    """Full basis stacks (constant + expanded head maps), one 1 x (K+1) x h x w tensor per sample."""
    import torch

    from .basis_head import expand_maps

    # one view at a time: relative maps differ in size between datasets; the head is tiny
    low = torch.cat([head([t[None] for t in s.view.taps], s.view.g[None, None]) for s in samples])
    stacks = []
    for i, s in enumerate(samples):
        m = expand_maps(low[i : i + 1], s.view.log_g_work[None], basis_cfg.guided_radius, basis_cfg.guided_eps)
        stacks.append(torch.cat([torch.ones_like(m[:, :1]), m], dim=1))
    return stacks


def analytic_stack(sample: Sample, basis_cfg):
    import torch

    from .bases import build_bases

    b = build_bases(sample.view.out, basis_cfg, len(sample.u))
    return torch.from_numpy(b.maps)[None]


# -------------------------------------------------------------------------------------------- train


def train(
    train_dirs, val_dirs, backbone, cfg: TrainConfig, out_path, progress: bool = True, basis_config=None
) -> TrainResult:
    import torch
    from tqdm import tqdm

    from .basis_head import BasisHead, HeadSpec, model_sha256, n_parameters, save_checkpoint
    from .basis_set import BasisConfig

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    basis_cfg = basis_config or BasisConfig()
    t0 = time.perf_counter()
    train_views = load_views(train_dirs, backbone, cfg, basis_cfg.work_long_side, rng, augmented=True)
    val_views = load_views(val_dirs, backbone, cfg, basis_cfg.work_long_side, rng, augmented=False) if val_dirs else []
    LOG.info("%d training / %d validation views in %.1f s", len(train_views), len(val_views), time.perf_counter() - t0)
    channels = tuple(int(f.shape[0]) for f in train_views[0].taps)
    spec = HeadSpec(
        backbone=backbone.name,
        taps=tuple(cfg.taps),
        channels=channels,
        k=cfg.k,
        hidden=cfg.hidden,
        backbone_model_sha256=model_sha256(getattr(backbone, "model_path", None)),
    )
    head = BasisHead(spec)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)

    # fixed validation draws (several per view): the same anchors every epoch, and for the analytic bases
    val_rng = np.random.default_rng(cfg.seed + 1)
    val_views_or_train = val_views or train_views[:: cfg.views_per_frame]
    val_samples = [s for v in val_views_or_train for _ in range(4) if (s := draw_sample(v, cfg, val_rng)) is not None]
    with torch.no_grad():
        analytic_val = float(
            np.mean([sample_loss(analytic_stack(s, basis_cfg), s, cfg, cfg.loss) for s in val_samples])
        )
    LOG.info(
        "head %d parameters; analytic bases %s loss on validation: %.4f", n_parameters(head), cfg.loss, analytic_val
    )

    history = []
    best = (np.inf, -1)
    skipped = 0  # steps whose loss was not finite
    for epoch in range(cfg.epochs):
        head.train()
        losses = []
        bar = tqdm(
            range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, file=sys.stderr
        )
        for _ in bar:
            picks = rng.choice(len(train_views), size=min(cfg.batch, len(train_views)), replace=False)
            samples = [s for i in picks if (s := draw_sample(train_views[i], cfg, rng)) is not None]
            if not samples:
                continue
            stacks = learned_stack(head, samples, basis_cfg)
            loss = torch.stack([sample_loss(m, s, cfg, cfg.loss) for m, s in zip(stacks, samples, strict=True)]).mean()
            if not torch.isfinite(loss):  # a NaN step would poison every weight from here on
                skipped += 1
                continue
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        head.eval()
        with torch.no_grad():
            val = float(
                np.mean([sample_loss(learned_stack(head, [s], basis_cfg)[0], s, cfg, cfg.loss) for s in val_samples])
            )
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "val_loss": val}
        history.append(row)
        LOG.info(
            "epoch %d: train %.4f, val %.4f (analytic %.4f)", epoch + 1, row["train_loss"] or np.nan, val, analytic_val
        )
        if val < best[0]:
            best = (val, epoch + 1)
            record = {
                "config": dataclasses.asdict(cfg),
                "train_data": [str(d) for d in train_dirs],
                "val_data": [str(d) for d in val_dirs],
                "epoch": epoch + 1,
                "val_loss": val,
                "analytic_val_loss": analytic_val,
                "history": history,
            }
            save_checkpoint(out_path, head, record)
    if skipped:
        LOG.warning("%d training steps had a non-finite loss and were skipped", skipped)
    if best[1] < 0:
        raise ValueError(f"no epoch gave a finite validation loss: no checkpoint written to {out_path}")
    return TrainResult(Path(out_path), best[1], best[0], analytic_val, tuple(history))


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--data", nargs="+", required=True, help="training dataset folders (layout of shared/data)")
    parser.add_argument("--val", nargs="*", default=[], help="validation dataset folders (default: training frames)")
    parser.add_argument("--model", default=None, help="backbone model file (default: the shared FastDepth)")
    parser.add_argument("--backbone", default="fastdepth", help="backbone name for load_backbone")
    parser.add_argument("--out", required=True, help="checkpoint to write (the best epoch)")
    parser.add_argument("--k", type=int, default=d.k, help="learned basis maps (plus the constant)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--steps", type=int, default=d.steps_per_epoch, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--hidden", type=int, default=d.hidden, help="head width")
    parser.add_argument("--taps", default=",".join(d.taps), help="comma-separated backbone feature maps")
    parser.add_argument("--views", type=int, default=d.views_per_frame, help="views per frame (1 = no augmentation)")
    parser.add_argument("--loss", default=d.loss, choices=LOSSES)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small ops: 1 is fastest)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from .backbones import load_backbone

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = TrainConfig(
        k=args.k,
        hidden=args.hidden,
        taps=tuple(t.strip() for t in args.taps.split(",") if t.strip()),
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        batch=args.batch,
        lr=args.lr,
        views_per_frame=args.views,
        loss=args.loss,
        seed=args.seed,
    )
    backbone = load_backbone(args.backbone, args.model)
    result = train(args.data, args.val, backbone, cfg, args.out, progress=not args.no_progress)
    print(
        f"wrote {result.checkpoint}: best epoch {result.best_epoch}, val {cfg.loss} {result.best_val:.4f} "
        f"(analytic bases {result.analytic_val:.4f})"
    )
    return 0
