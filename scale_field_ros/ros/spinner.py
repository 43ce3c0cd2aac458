"""An executor spun in a background thread, stopped cleanly (the benchmark and the tests' harness use it)."""

from __future__ import annotations

import threading


class BackgroundSpinner:
    """Spins `executor` in a daemon thread until `stop`.

    `stop` ends the loop and joins the thread before it shuts the executor down: `executor.shutdown` under a
    handler still running in `executor.spin` raced with it (rclpy's InvalidHandle on the executor's guard
    condition, raised in the spin thread)."""

    def __init__(self, executor, poll_s: float = 0.05) -> None:
        self.executor = executor
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=self._poll_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        self.executor.shutdown(timeout_sec=timeout_s)
