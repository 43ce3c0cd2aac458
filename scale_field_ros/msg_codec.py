"""ROS message payloads <-> numpy, with no ROS import.

Every function takes the message's fields (or, for the `*_msg_*` wrappers, any object carrying them), so the
same code decodes rclpy messages, rosbags dataclasses and hand-built test values. `data` may be bytes,
bytearray, memoryview, array.array('B') (rclpy), a numpy uint8 array (rosbags) or a list of ints.

Conventions (REP 103/118, sensor_msgs): images are row-major with `step` bytes a row (rows may be padded);
16UC1 depth is millimetres with 0 = no data, 32FC1 depth is metres with NaN/0 = no data; PointCloud2 packs
`rgb` as the float32 whose bit pattern is 0x00RRGGBB. A LiDAR cloud's per-point time is read from the
first of `POINT_TIME_FIELDS` it has (see `point_time_offsets`).
"""

from __future__ import annotations

import array
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .backbone import ImageError, to_rgb8
from .camera import DISTORTION_COEFFICIENTS, Intrinsics
from .poses import quaternion_from_rotation, rotation_from_quaternion


class MessageError(ValueError):
    """A message whose fields cannot be decoded (bad sizes, unsupported encoding, missing fields)."""


# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
POINTFIELD_DTYPES: dict[int, str] = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}

# Image encoding -> (channels, numpy base dtype, channel order for colour).
_COLOUR_ENCODINGS: dict[str, tuple[int, str, str]] = {
    "rgb8": (3, "u1", "rgb"),
    "bgr8": (3, "u1", "bgr"),
    "rgba8": (4, "u1", "rgb"),
    "bgra8": (4, "u1", "bgr"),
    "rgb16": (3, "u2", "rgb"),
    "bgr16": (3, "u2", "bgr"),
    "rgba16": (4, "u2", "rgb"),
    "bgra16": (4, "u2", "bgr"),
    "mono8": (1, "u1", "rgb"),
    "8UC1": (1, "u1", "rgb"),
    "mono16": (1, "u2", "rgb"),
}
_DEPTH_ENCODINGS: dict[str, tuple[int, str]] = {
    "16UC1": (1, "u2"),
    "mono16": (1, "u2"),
    "32FC1": (1, "f4"),
}
MM_PER_M = 1000.0


@dataclass(frozen=True)
class ImageFields:
    """The payload fields of a sensor_msgs/Image."""

    encoding: str
    height: int
    width: int
    step: int
    data: bytes
    is_bigendian: int = 0


@dataclass(frozen=True)
class CloudFields:
    """The payload fields of a sensor_msgs/PointCloud2; `fields` are (name, offset, datatype, count)."""

    fields: tuple[tuple[str, int, int, int], ...]
    point_step: int
    row_step: int
    width: int
    height: int
    data: bytes
    is_dense: bool
    is_bigendian: bool = False


# Per-point time fields of LiDAR drivers, in the order they are looked for: Ouster's `t` (uint32 ns after the
# stamp), Velodyne's and LIO-SAM's `time` (float32 s after the stamp), the `timestamp` of Hesai, Robosense
# (float64 absolute s) and Livox (float64 absolute ns). Integer fields are nanoseconds, float fields seconds,
# except that an absolute `timestamp` is taken in whichever unit puts it nearer the message stamp.
POINT_TIME_FIELDS = ("t", "time", "timestamp")
MAX_SCAN_SPAN_S = 1.0  # per-point offsets beyond this from the stamp are not one scan's: the times are ignored


@dataclass(frozen=True)
class DecodedCloud:
    """Finite xyz points of a PointCloud2 plus how many non-finite points were dropped; with a per-point time
    field, each kept point's time as an offset (s) from the message stamp, or why the field was ignored."""

    points: np.ndarray  # Nx3 float32 in the message's frame
    n_nonfinite: int
    point_time_s: np.ndarray | None = None  # N float32, s after (negative: before) the stamp
    time_field_note: str = ""  # non-empty: the cloud has a time field that could not be used, and why


@dataclass(frozen=True)
class CameraInfoFields:
    """The calibration fields of a sensor_msgs/CameraInfo."""

    width: int
    height: int
    distortion_model: str
    d: tuple[float, ...]
    k: tuple[float, ...]  # 9, row-major
    r: tuple[float, ...]  # 9, row-major
    p: tuple[float, ...]  # 12, row-major


def as_byte_array(data) -> np.ndarray:
    """Any of the byte containers ROS message libraries use -> 1-D uint8 numpy view (no copy where possible)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise MessageError(f"message data must be uint8, got {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, array.array):
        if data.itemsize != 1:
            raise MessageError(f"message data must be a byte array, got array of type {data.typecode!r}")
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"message data of type {type(data).__name__} is not a byte sequence") from exc


# --------------------------------------------------------------------------- images


def _image_view(
    encoding: str, height: int, width: int, step: int, data, is_bigendian: int, channels: int, base: str
) -> np.ndarray:
    """Validated strided HxWxC view of an image buffer, converted to native byte order."""
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise MessageError(f"{encoding} image has invalid size {width}x{height}")
    itemsize = np.dtype(base).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise MessageError(
            f"{encoding} image step {step} is smaller than width*channels*bytes = {width}*{channels}*{itemsize} "
            f"= {row_bytes}"
        )
    buf = as_byte_array(data)
    if buf.size != step * height:
        raise MessageError(f"{encoding} image data has {buf.size} bytes, expected step*height = {step}*{height}")
    dtype = np.dtype(base).newbyteorder(">" if is_bigendian else "<") if itemsize > 1 else np.dtype(base)
    # Strided view honours row padding without copying; the astype below makes it contiguous and native.
    view = np.ndarray(
        shape=(height, width, channels), dtype=dtype, buffer=buf, strides=(step, channels * itemsize, itemsize)
    )
    return view.astype(dtype.newbyteorder("="), copy=True)


def image_to_rgb8(encoding: str, height: int, width: int, step: int, data, is_bigendian: int = 0) -> np.ndarray:
    """sensor_msgs/Image fields -> HxWx3 RGB uint8. Colour and mono encodings only (depth: `image_to_depth_m`)."""
    if encoding not in _COLOUR_ENCODINGS:
        if encoding in _DEPTH_ENCODINGS:
            raise MessageError(f"{encoding} is a depth encoding, not a colour image; use image_to_depth_m")
        raise MessageError(f"unsupported image encoding {encoding!r}; supported: {', '.join(_COLOUR_ENCODINGS)}")
    channels, base, order = _COLOUR_ENCODINGS[encoding]
    pixels = _image_view(encoding, height, width, step, data, is_bigendian, channels, base)
    try:
        return to_rgb8(pixels, channel_order=order)
    except ImageError as exc:
        raise MessageError(f"{encoding} image: {exc}") from exc


def image_to_depth_m(
    encoding: str, height: int, width: int, step: int, data, is_bigendian: int = 0, depth_scale: float = MM_PER_M
) -> np.ndarray:
    """Depth image fields -> HxW float32 metres, 0 where there is no data (NaN/inf/negative included).

    16UC1 and mono16 hold millimetres by REP 118 (`depth_scale` units per metre); 32FC1 holds metres.
    """
    if encoding not in _DEPTH_ENCODINGS:
        raise MessageError(f"unsupported depth encoding {encoding!r}; supported: {', '.join(_DEPTH_ENCODINGS)}")
    channels, base = _DEPTH_ENCODINGS[encoding]
    raw = _image_view(encoding, height, width, step, data, is_bigendian, channels, base)[:, :, 0]
    if base == "u2":
        if not (depth_scale > 0 and math.isfinite(depth_scale)):
            raise MessageError(f"depth_scale must be positive, got {depth_scale}")
        return (raw.astype(np.float32) / np.float32(depth_scale)).astype(np.float32)
    depth = raw.astype(np.float32)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def depth_image_fields(depth_m: np.ndarray) -> ImageFields:
    """HxW float map (depth, confidence std, scale field) -> 32FC1 little-endian Image fields, step = width*4."""
    arr = np.asarray(depth_m)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MessageError(f"32FC1 image must be a non-empty HxW array, got shape {arr.shape}")
    h, w = arr.shape
    data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    return ImageFields(encoding="32FC1", height=h, width=w, step=w * 4, data=data, is_bigendian=0)


def rgb8_image_fields(rgb: np.ndarray) -> ImageFields:
    """HxWx3 RGB uint8 -> rgb8 Image fields, step = width*3."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise MessageError(f"rgb8 image must be HxWx3 uint8, got shape {arr.shape} dtype {arr.dtype}")
    h, w = arr.shape[:2]
    return ImageFields(encoding="rgb8", height=h, width=w, step=w * 3, data=np.ascontiguousarray(arr).tobytes())


def compressed_to_rgb8(format: str, data) -> np.ndarray:  # `format` is the message field name
    """sensor_msgs/CompressedImage fields (jpeg/png) -> HxWx3 RGB uint8.

    `format` is e.g. "jpeg", "png" or image_transport's "rgb8; jpeg compressed bgr8"; the decoder reads the
    codec from the bytes, and OpenCV always returns BGR(A), whatever the original encoding was.
    """
    import cv2

    fmt = (format or "").lower()
    if "compresseddepth" in fmt:
        raise MessageError(f"compressedDepth images are not supported (format {format!r})")
    encoding = fmt.split(";")[0].strip() if ";" in fmt else ""  # image_transport: "<encoding>; <codec> compressed"
    if encoding not in ("", *(e.lower() for e in _COLOUR_ENCODINGS)):
        # e.g. a 16UC1 depth image through the png plugin: it decodes, but it is not a camera image
        raise MessageError(f"CompressedImage of encoding {encoding!r} is not a camera image (format {format!r})")
    if fmt and not any(codec in fmt for codec in ("jpeg", "jpg", "png")):
        raise MessageError(f"unsupported CompressedImage format {format!r}; expected jpeg or png")
    buf = as_byte_array(data)
    if buf.size == 0:
        raise MessageError("CompressedImage has no data")
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise MessageError(f"CompressedImage data ({buf.size} bytes, format {format!r}) is not a decodable image")
    try:
        return to_rgb8(decoded, channel_order="bgr")
    except ImageError as exc:
        raise MessageError(f"CompressedImage: {exc}") from exc


# --------------------------------------------------------------------------- point clouds


def _field_tuple(field) -> tuple[str, int, int, int]:
    """A PointField-like object or a (name, offset, datatype, count) tuple -> tuple."""
    if isinstance(field, tuple):
        name, offset, datatype, count = field
    else:
        name, offset, datatype, count = field.name, field.offset, field.datatype, field.count
    return str(name), int(offset), int(datatype), int(count)


def pointcloud2_decode(
    fields: Sequence,
    point_step: int,
    row_step: int,
    width: int,
    height: int,
    data,
    is_bigendian: bool = False,
    stamp_s: float | None = None,
) -> DecodedCloud:
    """PointCloud2 fields -> finite xyz points (Nx3 float32), the count of non-finite points dropped, and with a
    time field (`POINT_TIME_FIELDS`) the points' time offsets from `stamp_s` (the header stamp; without it an
    absolute `timestamp` field cannot be used)."""
    point_step, row_step, width, height = int(point_step), int(row_step), int(width), int(height)
    by_name: dict[str, tuple[str, int, int, int]] = {}
    for f in fields:
        t = _field_tuple(f)
        by_name.setdefault(t[0], t)
    missing = [n for n in ("x", "y", "z") if n not in by_name]
    if missing:
        raise MessageError(f"PointCloud2 has no {'/'.join(missing)} field (fields: {sorted(by_name)})")
    if width < 0 or height < 0 or point_step <= 0:
        raise MessageError(f"PointCloud2 has invalid layout width={width} height={height} point_step={point_step}")
    if width * height == 0:
        return DecodedCloud(np.zeros((0, 3), np.float32), 0)
    if row_step < width * point_step:
        raise MessageError(f"PointCloud2 row_step {row_step} < width*point_step = {width}*{point_step}")
    buf = as_byte_array(data)
    if buf.size != row_step * height:
        raise MessageError(f"PointCloud2 data has {buf.size} bytes, expected row_step*height = {row_step}*{height}")
    order = ">" if is_bigendian else "<"
    for n in ("x", "y", "z"):
        if by_name[n][2] not in (FLOAT32, FLOAT64):
            raise MessageError(
                f"PointCloud2 field {n!r} has datatype {by_name[n][2]}; expected FLOAT32 (7) or FLOAT64 (8)"
            )
    time_name = next((n for n in POINT_TIME_FIELDS if n in by_name), None)
    names = ["x", "y", "z"] + ([time_name] if time_name else [])
    formats, offsets = [], []
    for n in names:
        _, offset, datatype, count = by_name[n]
        if datatype not in POINTFIELD_DTYPES:
            raise MessageError(f"PointCloud2 field {n!r} has unknown datatype {datatype}")
        size = np.dtype(POINTFIELD_DTYPES[datatype]).itemsize
        if count < 1 or offset < 0 or offset + size > point_step:
            raise MessageError(
                f"PointCloud2 field {n!r} (offset {offset}, {size} bytes, count {count}) "
                f"does not fit in point_step {point_step}"
            )
        formats.append(order + POINTFIELD_DTYPES[datatype])
        offsets.append(offset)
    point_dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    # Strided view: rows are row_step apart (organised clouds may pad rows), points point_step apart.
    grid = np.ndarray(shape=(height, width), dtype=point_dtype, buffer=buf, strides=(row_step, point_step))
    xyz = np.empty((height * width, 3), np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: dropped below with the NaNs
        for i, n in enumerate(("x", "y", "z")):
            xyz[:, i] = grid[n].reshape(-1)
    finite = np.isfinite(xyz).all(axis=1)
    times, note = None, ""
    if time_name:
        raw = grid[time_name].reshape(-1)
        times, note = point_time_offsets(time_name, raw, stamp_s, finite)
        if times is not None:
            finite &= np.isfinite(times)
    n_bad = int(finite.size - np.count_nonzero(finite))
    if times is not None and n_bad:
        times = times[finite]
    return DecodedCloud(xyz[finite] if n_bad else xyz, n_bad, times, note)


def point_time_offsets(
    name: str, raw: np.ndarray, stamp_s: float | None, use: np.ndarray | None = None
) -> tuple[np.ndarray | None, str]:
    """Per-point time offsets (float32 s from `stamp_s`) from the values `raw` of the time field `name` (see
    `POINT_TIME_FIELDS` for the conventions), or (None, why) when they cannot be one scan's times. `use` marks
    the points that count for the plausibility check (the finite ones)."""
    integer = raw.dtype.kind in "iu"
    values = raw.astype(np.float64)
    counted = np.isfinite(values) if use is None else np.isfinite(values) & use
    if not counted.any():
        return None, f"time field {name!r} holds no finite value"
    if name == "timestamp":
        if stamp_s is None or not math.isfinite(stamp_s):
            return None, "time field 'timestamp' is absolute and the cloud has no usable stamp"
        centre = float(np.median(values[counted]))
        unit = 1e-9 if integer or abs(centre * 1e-9 - stamp_s) < abs(centre - stamp_s) else 1.0
        offsets = (values - stamp_s / unit) * unit  # the stamp in the field's unit first: float64 keeps ns
    else:
        offsets = values * (1e-9 if integer else 1.0)
    span = float(np.max(np.abs(offsets[counted])))
    if not span <= MAX_SCAN_SPAN_S:
        return None, (
            f"time field {name!r} puts points up to {span:.3g} s from the cloud's stamp (more than one scan's "
            f"{MAX_SCAN_SPAN_S} s): per-point times ignored"
        )
    return offsets.astype(np.float32), ""


def pointcloud2_to_xyz(
    fields: Sequence, point_step: int, row_step: int, width: int, height: int, data, is_bigendian: bool = False
) -> np.ndarray:
    """PointCloud2 fields -> Nx3 float32 finite xyz (see `pointcloud2_decode` for the dropped-point count)."""
    return pointcloud2_decode(fields, point_step, row_step, width, height, data, is_bigendian).points


def pack_rgb_float(rgb: np.ndarray) -> np.ndarray:
    """Nx3 uint8 RGB -> N float32 whose bits are 0x00RRGGBB (the ROS/PCL `rgb` field convention)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2].astype(np.uint32)
    return packed.view(np.float32)


def unpack_rgb_float(rgb_float: np.ndarray) -> np.ndarray:
    """Inverse of `pack_rgb_float`: N float32 -> Nx3 uint8."""
    bits = np.ascontiguousarray(rgb_float, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1).astype(np.uint8)


def xyzrgb_cloud_fields(points_m: np.ndarray, rgb: np.ndarray | None = None) -> CloudFields:
    """Nx3 points (+ optional Nx3 uint8 colours) -> unorganised little-endian PointCloud2 layout and bytes."""
    if rgb is None:
        return cloud_fields(points_m)
    rgb = np.asarray(rgb)
    n = len(np.asarray(points_m))
    if rgb.shape != (n, 3):
        raise MessageError(f"rgb must be Nx3 matching {n} points, got shape {rgb.shape}")
    return cloud_fields(points_m, {"rgb": pack_rgb_float(rgb)})


def cloud_fields(points_m: np.ndarray, columns: dict[str, np.ndarray] | None = None) -> CloudFields:
    """Nx3 points as float32 x, y, z plus named per-point columns (N values each, of a PointField type, e.g. a
    LiDAR's uint32 `t`) -> unorganised little-endian PointCloud2 layout and bytes, fields packed in order."""
    pts = np.asarray(points_m)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MessageError(f"points must be Nx3, got shape {pts.shape}")
    n = pts.shape[0]
    columns = {k: np.asarray(v).reshape(-1) for k, v in (columns or {}).items()}
    datatype_of = {np.dtype(v).str[1:]: k for k, v in POINTFIELD_DTYPES.items()}
    for name, col in columns.items():
        if len(col) != n or col.dtype.str[1:] not in datatype_of:
            raise MessageError(
                f"column {name!r} must hold {n} values of a PointField type, got {col.dtype} x {len(col)}"
            )
    names = ["x", "y", "z", *columns]
    formats = ["<f4"] * 3 + ["<" + col.dtype.str[1:] for col in columns.values()]
    record = np.dtype({"names": names, "formats": formats})
    out = np.empty(n, record)
    for i, name in enumerate(("x", "y", "z")):
        out[name] = pts[:, i]
    for name, col in columns.items():
        out[name] = col
    fields = tuple((name, record.fields[name][1], datatype_of[record[name].str[1:]], 1) for name in names)
    return CloudFields(
        fields=fields,
        point_step=record.itemsize,
        row_step=record.itemsize * n,
        width=n,
        height=1,
        data=out.tobytes(),
        is_dense=bool(np.isfinite(pts).all()),
    )


# --------------------------------------------------------------------------- camera info


def camera_info_to_intrinsics(
    k: Sequence[float],
    width: int,
    height: int,
    distortion_model: str = "",
    d: Sequence[float] = (),
    roi: tuple[int, int, int, int] = (0, 0, 0, 0),
    binning: tuple[int, int] = (0, 0),
) -> Intrinsics:
    """CameraInfo K (9, row-major), image size, distortion, region of interest and binning -> `Intrinsics` of
    the image the driver sends.

    As image_geometry reads them: K and width x height are the full sensor's; a non-empty `roi` (x_offset,
    y_offset, width, height) crops it and `binning` (x, y; 0 or 1: none) then averages blocks, so the image is
    roi size / binning with cx' = (cx - x_offset) / binning_x (image_proc's crop_decimate publishes so). A
    distortion model `camera.DISTORTION_COEFFICIENTS` does not know is left out (a pinhole camera): check
    `camera_info_unsupported_distortion` and warn when it says so. Bad values raise MessageError.
    """
    kk = np.asarray(k, dtype=np.float64).reshape(-1)
    if kk.size != 9:
        raise MessageError(f"CameraInfo k must have 9 values, got {kk.size}")
    fx, fy, cx, cy = float(kk[0]), float(kk[4]), float(kk[2]), float(kk[5])
    if not all(math.isfinite(x) for x in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise MessageError(f"CameraInfo is uncalibrated or invalid: fx={fx} fy={fy} cx={cx} cy={cy}")
    if int(width) <= 0 or int(height) <= 0:
        raise MessageError(f"CameraInfo has invalid image size {width}x{height}")
    x_off, y_off, roi_w, roi_h = (int(v) for v in roi)
    if roi_w > 0 and roi_h > 0:
        if x_off + roi_w > int(width) or y_off + roi_h > int(height):
            raise MessageError(f"CameraInfo roi {roi_w}x{roi_h}+{x_off}+{y_off} leaves the {width}x{height} image")
        width, height, cx, cy = roi_w, roi_h, cx - x_off, cy - y_off
    bx, by = (max(int(b), 1) for b in binning)
    if bx > 1 or by > 1:
        width, height = int(width) // bx, int(height) // by
        if width <= 0 or height <= 0:
            raise MessageError(f"CameraInfo binning {bx}x{by} leaves no image")
        fx, cx, fy, cy = fx / bx, cx / bx, fy / by, cy / by
    model = distortion_model if distortion_model in DISTORTION_COEFFICIENTS else ""
    try:
        return Intrinsics(fx, fy, cx, cy, int(width), int(height), model, tuple(d) if model else ())
    except ValueError as exc:
        raise MessageError(f"CameraInfo distortion refused: {exc}") from exc


def camera_info_unsupported_distortion(distortion_model: str, d: Sequence[float]) -> str:
    """Why CameraInfo's distortion cannot be modelled ('' when it can, or there is none): a non-zero
    distortion of a model other than `camera.DISTORTION_COEFFICIENTS`."""
    coeffs = np.asarray(d, dtype=np.float64).reshape(-1)
    if distortion_model in DISTORTION_COEFFICIENTS or not (coeffs.size and np.any(coeffs != 0)):
        return ""
    return (
        f"camera_info distortion model {distortion_model!r} is not supported "
        f"(supported: {', '.join(DISTORTION_COEFFICIENTS)}): the image is treated as rectified"
    )


def camera_info_fields(intrinsics: Intrinsics) -> CameraInfoFields:
    """`Intrinsics` -> CameraInfo calibration: K and the distortion (plumb_bob with zero D when there is none),
    no rectification, P = [K | 0]. Our depth images are pixel-aligned with the input image, so this is the
    calibration of the image they were computed on."""
    i = intrinsics
    k = (i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0)
    p = (i.fx, 0.0, i.cx, 0.0, 0.0, i.fy, i.cy, 0.0, 0.0, 0.0, 1.0, 0.0)
    r = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if i.distorted:
        return CameraInfoFields(i.width, i.height, i.distortion_model, i.d, k, r, p)
    return CameraInfoFields(i.width, i.height, "plumb_bob", (0.0,) * 5, k, r, p)


# --------------------------------------------------------------------------- poses and stamps


def transform_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4x4 rigid transform -> (position xyz, unit quaternion xyzw with w >= 0)."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, 3].copy(), quaternion_from_rotation(T[:3, :3])[0]


def pose_to_transform(position: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """(position xyz, quaternion xyzw) -> 4x4 rigid transform; the quaternion is normalised, zero is an error."""
    q = np.asarray(quaternion_xyzw, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not (np.isfinite(norm) and norm > 1e-9):
        raise MessageError(f"invalid orientation quaternion {q.tolist()}")
    T = np.eye(4)
    T[:3, :3] = rotation_from_quaternion(q)[0]
    T[:3, 3] = np.asarray(position, dtype=np.float64)
    return T


def stamp_to_ns(sec: int, nanosec: int) -> int:
    return int(sec) * 1_000_000_000 + int(nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) as in builtin_interfaces/Time."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return sec, nanosec


# --------------------------------------------------------------------------- whole messages (duck-typed)


def image_msg_to_rgb8(msg) -> np.ndarray:
    return image_to_rgb8(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


def image_msg_to_depth_m(msg, depth_scale: float = MM_PER_M) -> np.ndarray:
    return image_to_depth_m(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, depth_scale)


def compressed_msg_to_rgb8(msg) -> np.ndarray:
    return compressed_to_rgb8(msg.format, msg.data)


def pointcloud2_msg_decode(msg) -> DecodedCloud:
    stamp = msg.header.stamp
    return pointcloud2_decode(
        msg.fields,
        msg.point_step,
        msg.row_step,
        msg.width,
        msg.height,
        msg.data,
        msg.is_bigendian,
        stamp_to_ns(stamp.sec, stamp.nanosec) * 1e-9,
    )


def pointcloud2_msg_to_xyz(msg) -> np.ndarray:
    return pointcloud2_msg_decode(msg).points


def camera_info_msg_to_intrinsics(msg, rectified: bool = False) -> Intrinsics:
    """The intrinsics of the image `msg` describes; `rectified`: of the rectified image (P's left 3x3, no
    distortion), as image_rect topics carry, instead of the raw one (K and D)."""
    roi = msg.roi
    k, model, d = (rectified_k(msg.p), "", ()) if rectified else (msg.k, msg.distortion_model, msg.d)
    return camera_info_to_intrinsics(
        k,
        msg.width,
        msg.height,
        model,
        d,
        (roi.x_offset, roi.y_offset, roi.width, roi.height),
        (msg.binning_x, msg.binning_y),
    )


def rectified_k(p: Sequence[float]) -> list[float]:
    """The 3x3 camera matrix of a rectified image: the left 3x3 of CameraInfo's 3x4 projection P."""
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if pp.size != 12:
        raise MessageError(f"CameraInfo p must have 12 values, got {pp.size}")
    return pp.reshape(3, 4)[:, :3].ravel().tolist()


def camera_info_msg_unsupported_distortion(msg) -> str:
    return camera_info_unsupported_distortion(msg.distortion_model, msg.d)


def stamp_msg_to_ns(stamp) -> int:
    return stamp_to_ns(stamp.sec, stamp.nanosec)
