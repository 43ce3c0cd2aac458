"""Thin rclpy adapter over `msg_codec`: message objects from codec output, stamps, QoS profiles.

Every byte-level conversion lives in `scale_field_ros.msg_codec` (pure numpy, shared with the bag tools);
this module only fills rclpy message objects and chooses QoS.
"""

from __future__ import annotations

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from .. import msg_codec
from ..camera import Intrinsics


def stamp_to_s(stamp) -> float:
    """builtin_interfaces/Time -> seconds (float; ns resolution is kept to ~0.1 us for stamps near 2^31 s)."""
    return msg_codec.stamp_msg_to_ns(stamp) * 1e-9


def header_from(header: Header, frame_id: str | None = None) -> Header:
    """A copy of `header` (same stamp), optionally with another frame."""
    out = Header()
    out.stamp = header.stamp
    out.frame_id = header.frame_id if frame_id is None else frame_id
    return out


def image_msg(fields: msg_codec.ImageFields, header: Header) -> Image:
    msg = Image()
    msg.header = header
    msg.height, msg.width, msg.step = fields.height, fields.width, fields.step
    msg.encoding = fields.encoding
    msg.is_bigendian = int(fields.is_bigendian)
    msg.data = fields.data
    return msg


def float_image_msg(values: np.ndarray, header: Header) -> Image:
    """HxW float map (metres, std, scale) -> 32FC1 Image."""
    return image_msg(msg_codec.depth_image_fields(values), header)


def rgb8_image_msg(rgb: np.ndarray, header: Header) -> Image:
    return image_msg(msg_codec.rgb8_image_fields(rgb), header)


def cloud_msg(fields: msg_codec.CloudFields, header: Header) -> PointCloud2:
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = fields.height, fields.width
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields.fields]
    msg.is_bigendian = bool(fields.is_bigendian)
    msg.point_step, msg.row_step = fields.point_step, fields.row_step
    msg.data = fields.data
    msg.is_dense = bool(fields.is_dense)
    return msg


def xyzrgb_cloud_msg(points_m: np.ndarray, rgb: np.ndarray | None, header: Header) -> PointCloud2:
    return cloud_msg(msg_codec.xyzrgb_cloud_fields(points_m, rgb), header)


def camera_info_msg(intrinsics: Intrinsics, header: Header) -> CameraInfo:
    f = msg_codec.camera_info_fields(intrinsics)
    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = f.width, f.height
    msg.distortion_model = f.distortion_model
    msg.d = list(f.d)
    msg.k = list(f.k)
    msg.r = list(f.r)
    msg.p = list(f.p)
    return msg


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Subscriptions: best effort by default (what camera and LiDAR drivers publish), reliable on request.

    A best-effort subscription also matches reliable publishers, but across processes it loses many large
    (~1 MB) messages under Fast DDS defaults; a reliable subscription only matches reliable publishers.
    """
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def output_qos(depth: int) -> QoSProfile:
    """Publishers: reliable, shallow KEEP_LAST; reaches reliable and best-effort subscribers alike."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
