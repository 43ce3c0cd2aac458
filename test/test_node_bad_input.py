"""Bad input through DDS: the node warns once per cause (throttled), keeps running and publishes nothing wrong."""

from __future__ import annotations

import numpy as np
import pytest
from node_harness import NodeHarness, camera_points, depth_of, domain_id, header

from scale_field_ros import msg_codec
from scale_field_ros.camera import Intrinsics
from scale_field_ros.datasets import shared_root
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.ros import conversions as conv

DATA = shared_root() / "data"
pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not (DATA / "sun3d_seq").is_dir(), reason=f"shared data not found at {DATA}"),
]
QUIET_S = 1.0  # how long to wait to be sure nothing was published for a refused image


@pytest.fixture(scope="module")
def setup(sun3d):
    from scale_field_ros.backbones import load_backbone

    h = NodeHarness(domain_id(31), load_backbone(), {"max_depth_m": 10.0, "anchor_max_age": 0.01, "warn_period": 60.0})
    frame = sun3d.frame(0)
    points = camera_points(draw_anchors(frame, "vio", 100, seed=0).anchors, frame.intrinsics)
    yield h, frame, points
    h.close()


class Clock:
    t = 100.0

    @classmethod
    def next(cls) -> float:
        cls.t += 1.0 / 30.0
        return cls.t


def good_frame(h, frame, points) -> np.ndarray:
    stamp = Clock.next()
    h.publish_camera_info(frame.intrinsics, stamp)
    h.publish_anchors(points, stamp)
    return depth_of(h.process_frame(frame.rgb, stamp))


def nothing_published(h, stamp) -> bool:
    try:
        h.output(stamp, timeout_s=QUIET_S)
    except TimeoutError:
        return True
    return False


def assert_warned_once(h, cause: str, times: int = 2) -> None:
    assert h.node.warn.counts.get(cause, 0) >= times, h.node.warn.counts
    assert h.node.warn.emitted.get(cause) == 1, h.node.warn.emitted


def assert_all_outputs_sane(h) -> None:
    for topic in ("metric_depth", "metric_depth/confidence"):
        for m in h.messages(topic):
            values = np.frombuffer(bytes(m.data), "<f4")
            assert np.all(np.isfinite(values)) and np.all(values >= 0), topic


def test_wrong_encoding(setup):
    h, frame, points = setup
    good_frame(h, frame, points)
    for encoding in ("16UC1", "yuv422"):
        for _ in range(2):
            stamp = Clock.next()
            h.publish_camera_info(frame.intrinsics, stamp)
            msg = conv.rgb8_image_msg(frame.rgb, header(stamp))
            msg.encoding = encoding
            h.pub_image.publish(msg)
            assert nothing_published(h, stamp)
    assert_warned_once(h, "bad_image", times=4)
    # a truncated buffer is refused too, not read out of bounds
    stamp = Clock.next()
    msg = conv.rgb8_image_msg(frame.rgb, header(stamp))
    msg.data = bytes(msg.data)[:-100]
    h.pub_image.publish(msg)
    assert nothing_published(h, stamp)
    assert good_frame(h, frame, points).shape == frame.depth_m.shape  # still running
    assert_all_outputs_sane(h)


def test_camera_info_size_disagrees(setup):
    h, frame, points = setup
    wrong = Intrinsics(300.0, 300.0, 160.0, 160.0, 320, 320)  # another aspect ratio: cannot be scaled
    for _ in range(2):
        stamp = Clock.next()
        h.publish_camera_info(wrong, stamp)
        h.wait_for(lambda: h.node._camera_info and h.node._camera_info[0] == wrong, 5.0, "camera_info")
        h.publish_image(frame.rgb, stamp)
        assert nothing_published(h, stamp)
    assert_warned_once(h, "camera_info_size")
    # half-size camera_info of the same camera is scaled to the image, and the result is the same as with
    # the full-size one
    half = frame.intrinsics.scaled_to(320, 240)
    stamp = Clock.next()
    h.publish_camera_info(half, stamp)
    h.wait_for(lambda: h.node._camera_info[0] == half, 5.0, "camera_info")
    h.publish_anchors(points, stamp)
    h.process_frame(frame.rgb, stamp)
    info = h.output(stamp, "metric_depth/camera_info")
    got = msg_codec.camera_info_msg_to_intrinsics(info)
    assert (got.width, got.height) == (640, 480)
    np.testing.assert_allclose(
        [got.fx, got.fy, got.cx, got.cy],
        [frame.intrinsics.fx, frame.intrinsics.fy, frame.intrinsics.cx, frame.intrinsics.cy],
        atol=1e-6,
    )
    good_frame(h, frame, points)
    assert_all_outputs_sane(h)


def test_camera_info_with_unknown_or_bad_distortion(setup):
    h, frame, points = setup
    for _ in range(2):  # a model we cannot evaluate: warned, the image treated as rectified
        stamp = Clock.next()
        msg = conv.camera_info_msg(frame.intrinsics, header(stamp))
        msg.distortion_model, msg.d = "kannala_brandt", [0.1, 0.01, 0.0, 0.0]
        h.pub_info.publish(msg)
        h.wait_for(lambda: h.node._camera_info.unsupported_distortion, 5.0, "camera_info")
        h.publish_anchors(points, stamp)
        assert depth_of(h.process_frame(frame.rgb, stamp)).shape == frame.depth_m.shape
    assert_warned_once(h, "unsupported_distortion")
    assert not h.node._camera_info.intrinsics.distorted
    good_frame(h, frame, points)
    for _ in range(2):  # NaN coefficients of a known model: refused, the last good camera_info stays
        msg = conv.camera_info_msg(frame.intrinsics, header(Clock.next()))
        msg.d = [float("nan")] * 5
        h.pub_info.publish(msg)
        h.wait_for(lambda: h.node.warn.counts.get("bad_camera_info", 0) >= 1, 5.0, "the refusal")
    assert h.node._camera_info.intrinsics == frame.intrinsics
    good_frame(h, frame, points)
    assert_all_outputs_sane(h)


def test_bad_anchor_clouds(setup):
    h, frame, points = setup
    for _ in range(2):
        stamp = Clock.next()
        h.publish_camera_info(frame.intrinsics, stamp)
        h.publish_anchors(np.full((500, 3), np.nan), stamp, wait=False)
        h.publish_anchors(np.zeros((0, 3)), stamp, wait=False)
        h.wait_for(lambda: h.node.warn.counts.get("anchors_empty", 0) >= 1, 5.0, "the empty-cloud warning")
        depth = depth_of(h.process_frame(frame.rgb, stamp))  # published on the filter's estimate
        assert np.all(np.isfinite(depth)) and np.all(depth > 0)
    assert_warned_once(h, "anchors_no_finite_points")
    assert_warned_once(h, "anchors_empty")
    assert_all_outputs_sane(h)


def test_anchor_cloud_with_unusable_point_times(setup):
    # a `time` field holding absolute seconds where relative ones are the convention: not one scan's times, so
    # they are ignored (with a warning, once) and the points are used as a cloud without times
    h, frame, points = setup
    for _ in range(2):
        stamp = Clock.next()
        h.publish_camera_info(frame.intrinsics, stamp)
        h.publish_anchors(points, stamp, columns={"time": np.full(len(points), 1.7e9 + stamp)})
        depth = depth_of(h.process_frame(frame.rgb, stamp))
        assert np.all(np.isfinite(depth)) and np.all(depth > 0)
        (used,) = h.node.anchor_buffer.query(stamp, 1e-6)
        assert used.point_time_s is None and len(used) == len(points)
    assert_warned_once(h, "anchor_point_times")
    assert h.node.stats.n_anchors > 0.8 * len(points)
    assert_all_outputs_sane(h)


def test_anchors_far_in_the_future(setup):
    h, frame, points = setup
    good_frame(h, frame, points)
    for _ in range(2):
        h.publish_anchors(points, Clock.t + 1000.0, wait=False)
    h.wait_for(lambda: h.node.warn.counts.get("anchors_far_future", 0) >= 2, 5.0, "far-future warnings")
    assert_warned_once(h, "anchors_far_future")
    assert h.node.anchor_buffer.newest_stamp_s < Clock.t + 10.0  # refused, the buffer was not flushed
    good_frame(h, frame, points)
    assert_all_outputs_sane(h)


def test_stamps_going_backwards(setup):
    h, frame, points = setup
    good_frame(h, frame, points)
    Clock.t -= 50.0  # the bag looped
    for _ in range(2):
        depth = good_frame(h, frame, points)
        assert np.all(np.isfinite(depth)) and np.all(depth > 0)
        Clock.t -= 50.0
    assert_warned_once(h, "image_stamp_backwards")
    assert_warned_once(h, "anchors_stamp_backwards")
    assert_all_outputs_sane(h)


def test_diagnostics_warn_while_images_arrive_and_none_is_published(setup):
    import time

    from diagnostic_msgs.msg import DiagnosticStatus

    from scale_field_ros.ros.node import STALE_OUTPUT_S

    h, frame, points = setup
    good_frame(h, frame, points)
    assert "no metric depth published" not in h.node.diagnostics_status().message
    wrong = Intrinsics(300.0, 300.0, 160.0, 160.0, 320, 320)  # every image is refused (camera_info_size)
    h.publish_camera_info(wrong, Clock.next())
    h.wait_for(lambda: h.node._camera_info and h.node._camera_info[0] == wrong, 5.0, "camera_info")
    end = time.monotonic() + STALE_OUTPUT_S + 0.5
    while time.monotonic() < end:  # a 10 Hz camera
        h.publish_image(frame.rgb, Clock.next())
        time.sleep(0.1)
    stats = h.node.stats
    h.wait_for(lambda: stats.last_image_s - stats.last_output_s > STALE_OUTPUT_S, 5.0, "the refused images")
    status = h.node.diagnostics_status()
    assert status.level == DiagnosticStatus.WARN and "no metric depth published for" in status.message
    good_frame(h, frame, points)  # the right camera_info again: answered, and the warning goes
    assert "no metric depth published" not in h.node.diagnostics_status().message
