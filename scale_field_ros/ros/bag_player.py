"""Play a recorded bag to a running node over DDS and record what the node publishes (rclpy, no ros2 CLI).

`play_through_node` publishes the bag's image / camera_info / anchors / odometry messages with their recorded
timing (scaled by `rate`). The node keeps only the newest image, so before each image the player waits until
the node has answered the previous one: the timeline stretches where inference is slower than the recording,
as `ros2 bag play` followed by a paused clock would, and every image is processed. Messages of one instant go
out non-image first; `settle` (optional) waits until the node has buffered them, so an image never races the
anchors recorded at its own stamp. The node's outputs are recorded as serialized CDR, ready for a bag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message

from ..bagio import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, ODOMETRY, POINTCLOUD2, BagMessage

OUTPUTS = {
    "/metric_depth": IMAGE,
    "/metric_depth/camera_info": CAMERA_INFO,
    "/metric_depth/points": POINTCLOUD2,
    "/metric_depth/confidence": IMAGE,
    "/scale_field": IMAGE,
}


def _rclpy_type(msgtype: str):
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

    types = {IMAGE: Image, COMPRESSED_IMAGE: CompressedImage, CAMERA_INFO: CameraInfo, POINTCLOUD2: PointCloud2}
    types[ODOMETRY] = Odometry
    if msgtype not in types:
        raise ValueError(f"the player does not publish {msgtype}")
    return types[msgtype]


def _reliable(depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


@dataclass
class Recorded:
    """One output message as it arrived: topic, type and serialized CDR."""

    topic: str
    msgtype: str
    cdr: bytes


@dataclass
class PlaybackResult:
    images_published: int = 0
    images_answered: int = 0
    wall_s: float = 0.0
    stall_s: float = 0.0  # time the timeline was stretched waiting for the node
    recorded: list[Recorded] = field(default_factory=list)

    def count(self, topic: str) -> int:
        return sum(1 for r in self.recorded if r.topic == topic)


class OutputRecorder:
    """Raw subscriptions to the node's outputs on `node` (any rclpy node in the node's context)."""

    def __init__(self, node: Node, depth: int = 50) -> None:
        self._lock = threading.Lock()
        self.recorded: list[Recorded] = []
        for topic, msgtype in OUTPUTS.items():
            node.create_subscription(_rclpy_type(msgtype), topic, self._callback(topic, msgtype), _reliable(depth),
                                     raw=True)  # fmt: skip

    def _callback(self, topic: str, msgtype: str):
        def record(cdr: bytes) -> None:
            with self._lock:
                self.recorded.append(Recorded(topic, msgtype, bytes(cdr)))

        return record

    def count(self, topic: str) -> int:
        with self._lock:
            return sum(1 for r in self.recorded if r.topic == topic)

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.recorded)


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def play_through_node(
    player: Node,
    recorder: OutputRecorder,
    messages: list[BagMessage],
    topic_map: dict[str, str],
    rate: float = 1.0,
    answer_timeout_s: float = 30.0,
    settle: Callable[[BagMessage], bool] | None = None,
    connect_timeout_s: float = 15.0,
) -> PlaybackResult:
    """Publish `messages` (log-time ordered) on `topic_map[bag topic]` and wait for the node's answers.

    `settle(msg)` returns True once the node has taken in a published non-image message.
    """
    from .. import bagio

    store = bagio.typestore()
    publishers = {}
    for m in messages:
        if m.topic in topic_map and m.topic not in publishers:
            publishers[m.topic] = player.create_publisher(_rclpy_type(m.msgtype), topic_map[m.topic], _reliable(10))
    if not _wait(lambda: all(p.get_subscription_count() > 0 for p in publishers.values()), connect_timeout_s):
        missing = [topic_map[t] for t, p in publishers.items() if p.get_subscription_count() == 0]
        raise TimeoutError(f"no subscriber on {', '.join(missing)} after {connect_timeout_s} s (is the node running?)")
    if not _wait(lambda: all(player.count_publishers(t) > 0 for t in OUTPUTS), connect_timeout_s):
        raise TimeoutError(f"the node publishes none of {', '.join(OUTPUTS)} after {connect_timeout_s} s")

    result = PlaybackResult()
    image_types = (IMAGE, COMPRESSED_IMAGE)
    start = time.monotonic()
    first_ns = messages[0].log_time_ns if messages else 0
    stall = 0.0
    i = 0
    while i < len(messages):
        # one instant: every message logged at the same time, images last
        j = i
        while j < len(messages) and messages[j].log_time_ns == messages[i].log_time_ns:
            j += 1
        group = sorted(messages[i:j], key=lambda m: m.msgtype in image_types)
        i = j
        due = start + (group[0].log_time_ns - first_ns) * 1e-9 / rate + stall
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for m in group:
            if m.topic not in publishers:
                continue
            msg = deserialize_message(bytes(store.serialize_cdr(m.msg, m.msgtype)), _rclpy_type(m.msgtype))
            if m.msgtype not in image_types:
                publishers[m.topic].publish(msg)
                if settle is not None:
                    _wait(lambda m=m: settle(m), 2.0)
                continue
            t0 = time.monotonic()
            before = recorder.count("/metric_depth")
            publishers[m.topic].publish(msg)
            result.images_published += 1
            if _wait(lambda before=before: recorder.count("/metric_depth") > before, answer_timeout_s):
                result.images_answered += 1
            behind = time.monotonic() - t0
            stall += behind
    # the last frame's other outputs may still be in flight
    n = result.images_answered
    _wait(lambda: all(recorder.count(t) >= n for t in OUTPUTS), 5.0)
    result.wall_s = time.monotonic() - start
    result.stall_s = stall
    result.recorded = recorder.snapshot()
    return result
