"""ROS 2 bags without a ROS installation: read typed, time-ordered messages; write MCAP/sqlite3 atomically.

Built on `rosbags` (pure Python). Messages are rosbags dataclasses; decode their payloads with `msg_codec`,
which is duck-typed and so serves rclpy messages in the node too. A bag is a rosbag2 directory
(metadata.yaml + .mcap/.db3) or a bare .mcap file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .msg_codec import CameraInfoFields, CloudFields, ImageFields, ns_to_stamp, stamp_msg_to_ns, transform_to_pose

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
ODOMETRY = "nav_msgs/msg/Odometry"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"

# The message definitions we use are identical (same RIHS01 hashes) in Humble, Jazzy and Kilted.
DEFAULT_DISTRO = "jazzy"
STORAGE_FORMATS = ("mcap", "sqlite3")
ROSBAG2_VERSION = 8  # readable by rosbag2 in Jazzy and later; a bare .mcap file also plays in Humble


class BagError(ValueError):
    """A bag that cannot be read as asked: unknown topic, wrong type, no messages, corrupt storage."""


def typestore(distro: str = DEFAULT_DISTRO):
    """The rosbags typestore for a ROS 2 distribution name ("humble", "jazzy", "kilted", ...)."""
    from rosbags.typesys import Stores, get_typestore

    try:
        return get_typestore(Stores(f"ros2_{distro.lower()}"))
    except ValueError as exc:
        raise BagError(f"unknown ROS 2 distribution {distro!r}") from exc


@dataclass(frozen=True)
class TopicSummary:
    topic: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One deserialised message. `stamp_ns` is the header stamp, or the log time for header-less messages."""

    topic: str
    msgtype: str
    log_time_ns: int
    stamp_ns: int
    msg: object


@dataclass(frozen=True)
class CameraBagTopics:
    """The topics a scale-field run consumes from a bag."""

    image: str = "/camera/image"
    camera_info: str = "/camera/camera_info"
    anchors: str = "/anchors"
    odom: str | None = "/odom"


def _open_reader(path: Path):
    from rosbags.highlevel import AnyReader, AnyReaderError

    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except AnyReaderError as exc:
        raise BagError(f"cannot open bag {path}: {exc}") from exc
    return reader


def bag_topics(path: str | Path) -> dict[str, TopicSummary]:
    """Topic name -> type and message count."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        out: dict[str, TopicSummary] = {}
        for c in reader.connections:
            prev = out.get(c.topic)
            if prev is not None and prev.msgtype != c.msgtype:
                raise BagError(f"bag {path}: topic {c.topic} carries two types ({prev.msgtype}, {c.msgtype})")
            out[c.topic] = TopicSummary(c.topic, c.msgtype, (prev.count if prev else 0) + c.msgcount)
        return out
    finally:
        reader.close()


def _describe(topics: dict[str, TopicSummary]) -> str:
    return ", ".join(f"{t.topic} [{t.msgtype}, {t.count}]" for t in topics.values()) or "none"


def read_messages(path: str | Path, topics: Sequence[str]) -> Iterator[BagMessage]:
    """Deserialised messages of `topics`, in log-time order. An unknown topic is a `BagError` naming the others."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        known = {c.topic for c in reader.connections}
        unknown = [t for t in topics if t not in known]
        if unknown:
            listed = ", ".join(sorted(known)) or "none"
            raise BagError(f"bag {path} has no topic {', '.join(unknown)}; topics in the bag: {listed}")
        connections = [c for c in reader.connections if c.topic in set(topics)]
        for connection, log_time_ns, raw in reader.messages(connections=connections):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # rosbags raises several types for corrupt CDR
                raise BagError(
                    f"bag {path}: cannot decode a {connection.msgtype} on {connection.topic}: {exc}"
                ) from exc
            header = getattr(msg, "header", None)
            stamp_ns = stamp_msg_to_ns(header.stamp) if header is not None else int(log_time_ns)
            yield BagMessage(connection.topic, connection.msgtype, int(log_time_ns), stamp_ns, msg)
    finally:
        reader.close()


def check_camera_bag(path: str | Path, topics: CameraBagTopics) -> dict[str, TopicSummary]:
    """Validate that the bag holds what a run needs, with a clear error for each missing piece."""
    path = Path(path)
    found = bag_topics(path)
    wanted = {
        "image": (topics.image, (IMAGE, COMPRESSED_IMAGE)),
        "camera_info": (topics.camera_info, (CAMERA_INFO,)),
        "anchors": (topics.anchors, (POINTCLOUD2,)),
    }
    if topics.odom:
        wanted["odom"] = (topics.odom, (ODOMETRY,))
    for role, (topic, types) in wanted.items():
        summary = found.get(topic)
        if summary is None or summary.count == 0:
            what = "no topic" if summary is None else "no messages on"
            raise BagError(
                f"bag {path} has {what} {role} topic {topic} ({' or '.join(types)}); "
                f"topics in the bag: {_describe(found)}"
            )
        if summary.msgtype not in types:
            raise BagError(f"bag {path}: {role} topic {topic} is {summary.msgtype}, expected {' or '.join(types)}")
    return found


def read_camera_bag(path: str | Path, topics: CameraBagTopics | None = None) -> Iterator[BagMessage]:
    """Validated, log-time-ordered image / camera_info / anchors (/ odom) messages of a bag."""
    topics = topics or CameraBagTopics()
    check_camera_bag(path, topics)
    names = [topics.image, topics.camera_info, topics.anchors] + ([topics.odom] if topics.odom else [])
    yield from read_messages(path, names)


class MessageFactory:
    """Builds rosbags message objects from msg_codec payloads (the bag-side twin of the node's rclpy builders)."""

    def __init__(self, distro: str = DEFAULT_DISTRO) -> None:
        self.store = typestore(distro)
        self.t = self.store.types

    def header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = ns_to_stamp(stamp_ns)
        return self.t["std_msgs/msg/Header"](self.t["builtin_interfaces/msg/Time"](sec, nanosec), frame_id)

    def image(self, stamp_ns: int, frame_id: str, f: ImageFields):
        data = np.frombuffer(f.data, np.uint8)
        return self.t[IMAGE](
            self.header(stamp_ns, frame_id), f.height, f.width, f.encoding, f.is_bigendian, f.step, data
        )

    def compressed_image(self, stamp_ns: int, frame_id: str, format: str, data: bytes):  # noqa: A002
        return self.t[COMPRESSED_IMAGE](self.header(stamp_ns, frame_id), format, np.frombuffer(data, np.uint8))

    def camera_info(self, stamp_ns: int, frame_id: str, f: CameraInfoFields):
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](0, 0, 0, 0, False)
        arr = lambda v: np.asarray(v, np.float64)  # noqa: E731
        return self.t[CAMERA_INFO](
            self.header(stamp_ns, frame_id),
            f.height,
            f.width,
            f.distortion_model,
            arr(f.d),
            arr(f.k),
            arr(f.r),
            arr(f.p),
            0,
            0,
            roi,
        )

    def pointcloud2(self, stamp_ns: int, frame_id: str, c: CloudFields):
        point_field = self.t["sensor_msgs/msg/PointField"]
        fields = [point_field(name, offset, datatype, count) for name, offset, datatype, count in c.fields]
        return self.t[POINTCLOUD2](
            self.header(stamp_ns, frame_id),
            c.height,
            c.width,
            fields,
            c.is_bigendian,
            c.point_step,
            c.row_step,
            np.frombuffer(c.data, np.uint8),
            c.is_dense,
        )

    def _pose(self, T: np.ndarray):
        position, q = transform_to_pose(T)
        return self.t["geometry_msgs/msg/Pose"](
            self.t["geometry_msgs/msg/Point"](*map(float, position)),
            self.t["geometry_msgs/msg/Quaternion"](*map(float, q)),
        )

    def odometry(self, stamp_ns: int, frame_id: str, child_frame_id: str, T_frame_child: np.ndarray):
        """Pose only (twist unknown: zero with covariance -1 in the first element, as REP 145 suggests)."""
        vec3 = self.t["geometry_msgs/msg/Vector3"]
        twist_cov = np.zeros(36)
        twist_cov[0] = -1.0
        return self.t[ODOMETRY](
            self.header(stamp_ns, frame_id),
            child_frame_id,
            self.t["geometry_msgs/msg/PoseWithCovariance"](self._pose(T_frame_child), np.zeros(36)),
            self.t["geometry_msgs/msg/TwistWithCovariance"](
                self.t["geometry_msgs/msg/Twist"](vec3(0.0, 0.0, 0.0), vec3(0.0, 0.0, 0.0)), twist_cov
            ),
        )

    def tf(self, stamp_ns: int, frame_id: str, child_frame_id: str, T_frame_child: np.ndarray):
        """A TFMessage with one transform: `child_frame_id` expressed in `frame_id` (maps child points to frame)."""
        position, q = transform_to_pose(T_frame_child)
        transform = self.t["geometry_msgs/msg/Transform"](
            self.t["geometry_msgs/msg/Vector3"](*map(float, position)),
            self.t["geometry_msgs/msg/Quaternion"](*map(float, q)),
        )
        stamped = self.t["geometry_msgs/msg/TransformStamped"](
            self.header(stamp_ns, frame_id), child_frame_id, transform
        )
        return self.t[TF_MESSAGE]([stamped])


def _latched_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        1,
        QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


class BagWriter:
    """Writes a ROS 2 bag atomically: into a temporary sibling, renamed into place only on a clean close.

    `path` ending in ".mcap" gives a bare MCAP file; any other path gives a rosbag2 directory in `storage`
    ("mcap" or "sqlite3"). Use as a context manager; on an exception nothing is left at `path`.
    """

    def __init__(
        self, path: str | Path, storage: str = "mcap", overwrite: bool = False, distro: str = DEFAULT_DISTRO
    ) -> None:
        self.path = Path(path)
        self.bare_mcap = self.path.suffix == ".mcap"
        if storage not in STORAGE_FORMATS:
            raise BagError(f"unknown bag storage {storage!r}; expected one of {', '.join(STORAGE_FORMATS)}")
        if self.bare_mcap and storage != "mcap":
            raise BagError(f"{self.path} ends in .mcap but storage {storage!r} was asked for")
        if self.path.exists() and not overwrite:
            raise BagError(f"{self.path} exists already; pass overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)  # `--out out/x.mcap` on a fresh checkout
        self.storage = storage
        self.distro = distro
        # A hidden sibling folder on the same filesystem, so the final rename is atomic; inside it the bag has
        # its final name, because rosbag2 names the storage file after the bag folder.
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        self._bag_dir = self._tmp / (self.path.stem if self.bare_mcap else self.path.name)
        self._writer = None
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.store = typestore(self.distro)
        if self._tmp.exists():  # left over by a killed run with the same pid
            shutil.rmtree(self._tmp)
        self._tmp.mkdir()
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._bag_dir, version=ROSBAG2_VERSION, storage_plugin=plugin)
        self._writer.open()
        return self

    def write(self, topic: str, msg, log_time_ns: int, latched: bool = False) -> None:
        """Serialise and write one rosbags message; its topic's connection is added on first use.

        `latched` (on a topic's first message) records transient-local QoS, as /tf_static needs for playback.
        """
        if self._writer is None:
            raise BagError("BagWriter is not open; use it as a context manager")
        msgtype = msg.__msgtype__
        conn = self._connections.get(topic)
        if conn is None:
            qos = [_latched_qos()] if latched else []
            conn = self._writer.add_connection(topic, msgtype, typestore=self.store, offered_qos_profiles=qos)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"topic {topic} is {conn.msgtype}; cannot write a {msgtype} to it")
        self._writer.write(conn, int(log_time_ns), self.store.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def __exit__(self, exc_type, exc, tb) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
            if exc_type is None:
                self._commit()
        finally:
            if self._tmp.exists():
                shutil.rmtree(self._tmp)

    def _commit(self) -> None:
        source = self._bag_dir / f"{self._bag_dir.name}.mcap" if self.bare_mcap else self._bag_dir
        if not source.exists():
            raise BagError(f"bag writer produced no {source}")
        old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
        if self.path.exists():
            os.replace(self.path, old)  # keep the old bag until the new one is in place
        os.replace(source, self.path)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
