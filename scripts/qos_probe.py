#!/usr/bin/env python3
"""Measure how many large Image messages cross processes for each subscriber reliability.

A reliable publisher in one process sends N images of about 1 MB; a subscriber in another process counts
what arrives, once best effort and once reliable. Run it with and without
FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in the environment to compare Fast DDS transports:

    python scripts/qos_probe.py [--count 20] [--mbytes 1.0]
    FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA python scripts/qos_probe.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def qos(reliable: bool):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=policy)


def subscribe(reliable: bool, count: int, timeout_s: float) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("qos_probe_sub")
    received = []
    node.create_subscription(Image, "probe_image", lambda m: received.append(m.header.frame_id), qos(reliable))
    print("ready", flush=True)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and len(received) < count:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(len(received), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def publish(count: int, mbytes: float, period_s: float) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("qos_probe_pub")
    pub = node.create_publisher(Image, "probe_image", qos(True))
    width = 640
    height = max(1, int(mbytes * 1e6 / (width * 3)))
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = bytes(width * 3 * height)
    end = time.monotonic() + 5.0
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)  # let discovery settle both ways
    for i in range(count):
        msg.header.frame_id = str(i)
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=period_s)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()


def run_pair(reliable: bool, count: int, mbytes: float, period_s: float) -> int:
    me = [sys.executable, __file__]
    sub = subprocess.Popen(
        [*me, "--role", "sub", "--reliable", str(int(reliable)), "--count", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout.readline().strip() == "ready"
    subprocess.run(
        [*me, "--role", "pub", "--count", str(count), "--mbytes", str(mbytes), "--period", str(period_s)], check=True
    )
    out, _ = sub.communicate(timeout=60)
    return int(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("both", "pub", "sub"), default="both")
    p.add_argument("--reliable", type=int, default=0)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--mbytes", type=float, default=1.0)
    p.add_argument("--period", type=float, default=0.05)
    a = p.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 100))
    if a.role == "sub":
        subscribe(bool(a.reliable), a.count, timeout_s=20.0)
    elif a.role == "pub":
        publish(a.count, a.mbytes, a.period)
    else:
        transports = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "DEFAULT")
        for reliable in (False, True):
            got = run_pair(reliable, a.count, a.mbytes, a.period)
            kind = "reliable" if reliable else "best effort"
            print(f"FASTDDS_BUILTIN_TRANSPORTS={transports}: {kind} subscriber got {got} of {a.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
