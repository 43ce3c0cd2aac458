"""Temporal filter through the node: a static SUN3D scene with fresh noisy sparse anchors every frame, and
anchors on one frame in three (the filter coasts between them)."""

from __future__ import annotations

import numpy as np
import pytest
from node_harness import NodeHarness, camera_points, depth_of, domain_id, float_image_of
from rclpy.parameter import Parameter

from scale_field_ros.datasets import shared_root
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors

DATA = shared_root() / "data"
pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not (DATA / "sun3d_seq").is_dir(), reason=f"shared data not found at {DATA}"),
]
N_FRAMES = 16
N_ANCHORS = 40
NOISE = 0.05  # multiplicative std of the anchors' depth


@pytest.fixture(scope="module")
def harness():
    from scale_field_ros.backbones import load_backbone

    h = NodeHarness(domain_id(21), load_backbone(), {"max_depth_m": 10.0, "anchor_max_age": 0.01})
    yield h
    h.close()


_clock = [10.0]  # stamps keep moving forward across runs, like a live camera


def run_static(h: NodeHarness, frame, filtered: bool, anchor_every: int = 1):
    h.node.set_parameters([Parameter("filter.enabled", value=filtered)])
    t0 = _clock[0]
    _clock[0] += N_FRAMES / 30.0 + 0.1
    depths, stds, scores = [], [], []
    for k in range(N_FRAMES):
        stamp = t0 + k / 30.0
        h.publish_camera_info(frame.intrinsics, stamp)
        draw = None
        if k % anchor_every == 0:
            draw = draw_anchors(frame, "uniform", N_ANCHORS, seed=1000 + k, noise=NOISE)
            h.publish_anchors(camera_points(draw.anchors, frame.intrinsics), stamp)
        depth = depth_of(h.process_frame(frame.rgb, stamp))
        depths.append(depth)
        stds.append(float(np.median(float_image_of(h.output(stamp, "metric_depth/confidence")))))
        mask = evaluation_mask(frame.depth_m, 0.1, 10.0, draw.anchors if draw else None)
        scores.append(compute_metrics(depth, frame.depth_m, mask).absrel)
    return np.stack(depths), np.asarray(stds), np.asarray(scores)


def test_filter_halves_frame_to_frame_noise(harness, sun3d):
    frame = sun3d.frame(0)
    raw, _, raw_absrel = run_static(harness, frame, filtered=False)
    filt, _, filt_absrel = run_static(harness, frame, filtered=True)
    skip = 3  # let the filter settle
    valid = frame.depth_m > 0
    std_raw = float(np.mean(raw[skip:].std(axis=0)[valid]))
    std_filt = float(np.mean(filt[skip:].std(axis=0)[valid]))
    print(
        f"frame-to-frame std: per-frame {std_raw:.4f} m, filtered {std_filt:.4f} m; AbsRel per-frame "
        f"{raw_absrel[skip:].mean():.4f}, filtered {filt_absrel[skip:].mean():.4f}"
    )
    assert std_filt <= 0.5 * std_raw
    assert filt_absrel[skip:].mean() <= raw_absrel[skip:].mean() + 0.005


def test_anchors_on_one_frame_in_three(harness, sun3d):
    frame = sun3d.frame(0)
    depths, conf, absrel = run_static(harness, frame, filtered=True, anchor_every=3)
    assert len(depths) == N_FRAMES  # every frame published, anchored or not
    assert np.all(np.isfinite(depths)) and np.all(depths > 0)
    # coasting frames carry the estimate: as accurate as the anchored ones, with wider confidence
    anchored = np.arange(N_FRAMES) % 3 == 0
    print(f"AbsRel anchored frames {absrel[anchored].mean():.4f}, coasting frames {absrel[~anchored].mean():.4f}")
    assert absrel[~anchored].mean() <= absrel[anchored].mean() + 0.02
    triples = conf[: N_FRAMES // 3 * 3].reshape(-1, 3)  # anchored, coasting, coasting
    assert np.all(np.diff(triples, axis=1) > 0), triples
