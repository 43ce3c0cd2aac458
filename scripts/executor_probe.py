#!/usr/bin/env python3
"""Why `scale_field_node` infers in its own thread: rclpy's MultiThreadedExecutor busy-loops on queued tasks.

Two set-ups of the same work, each for `--seconds`: a "frame" of numpy work like the scale-field stage (many
small array operations, so the thread keeps giving up and taking back the GIL) runs back to back, while a
publisher sends small messages at `--rate` Hz to a subscription of the same process.
- `executor`: the frame runs as a callback of its own mutually exclusive group, re-armed by a guard
  condition, under a MultiThreadedExecutor (4 threads), as the node once did;
- `thread`: the frame runs in a plain thread; a SingleThreadedExecutor serves the subscription (the node now).
Prints per set-up: frame time median / p95 / max (ms), and how often the executor handed out a task and
asked `can_execute` per second. Usage: python scripts/executor_probe.py [--seconds 10] [--rate 30]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def frame_work(rng: np.random.Generator) -> float:
    """About as many small numpy calls as one scale-field frame; returns its duration in ms."""
    t0 = time.perf_counter()
    a = rng.standard_normal((1000, 16))
    w = np.zeros(16)
    for _ in range(300):
        u = a @ w - 1.0
        w = w - 1e-3 * (a.T @ np.minimum(np.abs(u), 1.0))
    return (time.perf_counter() - t0) * 1e3


def run(mode: str, seconds: float, rate: float) -> dict:
    import rclpy
    import rclpy.executors as ex
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from std_msgs.msg import String

    counts = {"yield": 0, "can_execute": 0}
    can_execute = ex.Executor.can_execute

    def counted(self, entity):
        counts["can_execute"] += 1
        return can_execute(self, entity)

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=150 + (hash(mode) % 50))
    node = rclpy.create_node(f"probe_{mode}", context=ctx)
    pub = node.create_publisher(String, "probe", 10)
    node.create_subscription(String, "probe", lambda _m: None, 10)
    times: list[float] = []
    rng = np.random.default_rng(0)
    stop = threading.Event()
    if mode == "executor":
        group = MutuallyExclusiveCallbackGroup()
        guard = None

        def infer() -> None:
            times.append(frame_work(rng))
            if not stop.is_set():
                guard.trigger()

        guard = node.create_guard_condition(infer, callback_group=group)
        executor = ex.MultiThreadedExecutor(num_threads=4, context=ctx)
        guard.trigger()
    else:
        executor = ex.SingleThreadedExecutor(context=ctx)

        def loop() -> None:
            while not stop.is_set():
                times.append(frame_work(rng))

        threading.Thread(target=loop, daemon=True).start()
    executor.add_node(node)
    ex.Executor.can_execute = counted
    wait_for_ready = executor._wait_for_ready_callbacks

    def counting_wait(*args, **kwargs):
        for item in wait_for_ready(*args, **kwargs):
            counts["yield"] += 1
            yield item

    executor._wait_for_ready_callbacks = counting_wait
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        pub.publish(String(data="x"))
        time.sleep(1.0 / rate)
    stop.set()
    settle = time.monotonic() + 5.0  # let the frame in flight finish before the executor goes
    while time.monotonic() < settle:
        n = len(times)
        time.sleep(0.3)
        if len(times) == n:
            break
    executor.shutdown(timeout_sec=5.0)
    ex.Executor.can_execute = can_execute
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    spinner.join(timeout=5.0)
    t = np.asarray(times[3:])
    return {
        "frames": len(t),
        "frame_ms": (float(np.median(t)), float(np.percentile(t, 95)), float(t.max())),
        "yields_per_s": counts["yield"] / seconds,
        "can_execute_per_s": counts["can_execute"] / seconds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=30.0)
    a = p.parse_args()
    for mode in ("executor", "thread"):
        r = run(mode, a.seconds, a.rate)
        med, p95, mx = r["frame_ms"]
        print(
            f"{mode:8s}: {r['frames']} frames, frame ms median {med:.1f} p95 {p95:.1f} max {mx:.1f}; "
            f"executor task yields {r['yields_per_s']:.0f}/s, can_execute calls {r['can_execute_per_s']:.0f}/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
