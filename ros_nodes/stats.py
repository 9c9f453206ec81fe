"""Statistics for ``/diagnostics`` (no rclpy): rolling percentiles, control-tick jitter, ROS clock jumps."""

from __future__ import annotations

import collections
import math
import threading

import numpy as np


class RollingStats:
    """Percentiles over the last `window` samples (latencies in seconds)."""

    def __init__(self, window: int = 1000) -> None:
        self._x: collections.deque[float] = collections.deque(maxlen=window)
        self.count = 0
        self._lock = threading.Lock()

    def add(self, x: float) -> None:
        with self._lock:
            self._x.append(float(x))
            self.count += 1

    def values(self) -> np.ndarray:
        with self._lock:
            return np.asarray(self._x, dtype=np.float64)

    def percentile(self, q: float) -> float:
        v = self.values()
        return float(np.percentile(v, q)) if v.size else math.nan

    def summary(self) -> dict[str, float]:
        v = self.values()
        if not v.size:
            return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
        return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                "max": float(v.max()), "mean": float(v.mean())}


class LatencyHistogram:
    """Percentiles over every sample since creation in constant memory: 1-ms bins up to `max_s` (later ones
    in the last bin), so a node running for hours keeps exact-to-the-bin percentiles without growing."""

    def __init__(self, bin_s: float = 1e-3, max_s: float = 2.0) -> None:
        if bin_s <= 0 or max_s <= bin_s:
            raise ValueError(f"need 0 < bin_s < max_s, got {bin_s}, {max_s}")
        self.bin_s = float(bin_s)
        self._bins = np.zeros(int(math.ceil(max_s / bin_s)) + 1, dtype=np.int64)
        self.count = 0
        self._lock = threading.Lock()

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            return
        i = min(max(int(x / self.bin_s), 0), self._bins.size - 1)
        with self._lock:
            self._bins[i] += 1
            self.count += 1

    def percentile(self, q: float) -> float:
        """The upper edge of the bin holding the `q`-th percentile (NaN before the first sample)."""
        with self._lock:
            if not self.count:
                return math.nan
            c = np.cumsum(self._bins)
            i = int(np.searchsorted(c, q / 100.0 * self.count, side="left"))
        return (min(i, self._bins.size - 1) + 1) * self.bin_s


class TickStats:
    """Control-tick timing on the monotonic clock: interval jitter and overruns."""

    def __init__(self, period: float, window: int = 1000) -> None:
        self.period = float(period)
        self.ticks = 0
        self.late = 0  # intervals longer than 1.5 periods (a tick was effectively skipped)
        self.jitter = RollingStats(window)  # |interval - period|
        self._last: float | None = None

    def tick(self, mono: float) -> None:
        self.ticks += 1
        if self._last is not None:
            dt = mono - self._last
            self.jitter.add(abs(dt - self.period))
            if dt > 1.5 * self.period:
                self.late += 1
        self._last = mono

    def reset(self) -> None:
        self._last = None


class ClockJumpDetector:
    """Flags a jump of the ROS clock against the monotonic clock (time set, sim-time switch)."""

    def __init__(self, tolerance: float = 0.5) -> None:
        self.tolerance = float(tolerance)
        self._last: tuple[float, float] | None = None

    def update(self, ros_now: float, mono_now: float) -> bool:
        last, self._last = self._last, (ros_now, mono_now)
        if last is None:
            return False
        return abs((ros_now - last[0]) - (mono_now - last[1])) > self.tolerance

    def reset(self) -> None:
        self._last = None
