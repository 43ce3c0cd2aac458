"""`scale-field train`: a short run on one real dataset lowers the training loss and writes a usable checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dataset_dir
from field_backbone import backbone as fastdepth_backbone

from scale_field_ros.basis_head import BasisHead, LearnedBases, load_checkpoint
from scale_field_ros.basis_set import BasisConfig
from scale_field_ros.train import TrainConfig, draw_sample, learned_stack, load_views, sample_loss, train


def test_short_run_lowers_training_loss(tmp_path):
    bb = fastdepth_backbone()
    if getattr(bb, "name", "") != "fastdepth":
        pytest.skip("needs the product's FastDepth backbone (decoder features dec3/dec4)")
    torch.set_num_threads(1)
    nyu = dataset_dir("nyu")
    cfg = TrainConfig(k=3, hidden=16, epochs=2, steps_per_epoch=8, batch=2, lr=1e-2, views_per_frame=1, seed=0)
    basis_cfg = BasisConfig(work_long_side=80)
    # fixed draws on the training frames, scored before (fresh head) and after training
    views = load_views([nyu], bb, cfg, basis_cfg.work_long_side, np.random.default_rng(5), augmented=False)
    rng = np.random.default_rng(7)
    samples = [s for v in views for _ in range(3) if (s := draw_sample(v, cfg, rng)) is not None]

    def score(head):
        with torch.no_grad():
            return float(
                np.mean([sample_loss(learned_stack(head, [s], basis_cfg)[0], s, cfg, cfg.loss) for s in samples])
            )

    result = train([nyu], [], bb, cfg, tmp_path / "head.pt", progress=False, basis_config=basis_cfg)
    head, record = load_checkpoint(result.checkpoint, "fastdepth")
    torch.manual_seed(cfg.seed)
    fresh = BasisHead(head.spec)
    assert score(head) < score(fresh)
    assert record["config"]["k"] == 3 and record["epoch"] == result.best_epoch and len(result.history) == 2
    assert (
        head.spec.taps == cfg.taps and head.spec.backbone == "fastdepth" and len(head.spec.backbone_model_sha256) == 64
    )
    bases = LearnedBases(head)(views[0].out, BasisConfig(), 100)
    assert bases.k == 4 and np.isfinite(bases.maps).all()


def test_cli_is_registered():
    from scale_field_ros.cli import build_parser

    args = build_parser("train").parse_args(["train", "--data", "x", "--out", "h.pt", "--k", "5", "--epochs", "1"])
    assert args.k == 5 and args.epochs == 1 and args._module == "scale_field_ros.train"


def test_training_without_a_finite_loss_writes_nothing_and_says_so(tmp_path, monkeypatch):
    from scale_field_ros import train as train_module

    bb = fastdepth_backbone()
    if getattr(bb, "name", "") != "fastdepth":
        pytest.skip("needs the product's FastDepth backbone (decoder features dec3/dec4)")
    real_loss = train_module.sample_loss

    def nan_loss(*args, **kwargs):  # every step and every validation loss non-finite
        return real_loss(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train_module, "sample_loss", nan_loss)
    cfg = TrainConfig(k=2, hidden=8, epochs=1, steps_per_epoch=2, batch=2, views_per_frame=1)
    with pytest.raises(ValueError, match="no checkpoint written"):
        train([dataset_dir("nyu")], [], bb, cfg, tmp_path / "head.pt", progress=False)
    assert not (tmp_path / "head.pt").exists()
