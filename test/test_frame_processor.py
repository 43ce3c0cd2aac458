"""The node's per-image work (`FrameProcessor`) without DDS: the image-stamp rules that reset the filter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python wheels (message types)")

from node_harness import header  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from scale_field_ros.frame_processor import FrameProcessor  # noqa: E402
from scale_field_ros.ros import conversions as conv  # noqa: E402
from scale_field_ros.run_offline import load_settings  # noqa: E402


def image_msg(rgb: np.ndarray) -> Image:
    msg = Image()
    msg.header = header(0.0, "camera")
    msg.encoding, msg.height, msg.width, msg.step = "rgb8", rgb.shape[0], rgb.shape[1], 3 * rgb.shape[1]
    msg.data = rgb.tobytes()
    return msg


@pytest.mark.parametrize("tolerance_s", [0.5, 5.0])
def test_image_stamps_going_back_reset_by_the_filter_setting(sun3d, fastdepth_path, tolerance_s):
    from scale_field_ros.backbones import load_backbone

    settings, config = load_settings()
    config = dataclasses.replace(config, filter=dataclasses.replace(config.filter, backwards_tolerance_s=tolerance_s))
    proc = FrameProcessor(settings, config, load_backbone("fastdepth", fastdepth_path, runtime="onnxruntime"))
    frame = sun3d.frame(0)
    proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera")))
    msg = image_msg(frame.rgb)
    assert proc.process_image(msg, False, 100.0).frame is not None
    step = proc.process_image(msg, False, 98.0)  # 2 s back: a reset only where the tolerance is shorter
    assert step.frame is not None
    warned = any(cause == "image_stamp_backwards" for cause, _ in step.warnings)
    assert warned == (tolerance_s < 2.0)
