"""Action streamer (no rclpy): the time-indexed queue of clean actions read once per control tick.

Timing model of ``policy_node`` (DESIGN.md 3). A control timer ticks at the checkpoint's fps with
tick times tau_k. At each tick:

1. :class:`~streamdp.ros_nodes.observation.ObservationSync` samples the newest sensor data
   (zero-order hold); a stale stream means no new input this tick.
2. The frame goes to the :class:`~streamdp.ros_nodes.inference.InferenceWorker` thread (never waited
   on). When the :class:`ActionStreamer` will run out of actions, the frame also requests a chunk: its
   Ta clean actions are intended for ticks tau_{k+d} ... tau_{k+d+Ta-1} (d = ``action_delay_ticks``,
   the inference deadline in ticks). Frames that arrive while a chunk is being solved are observed
   after it, in order, so every chunk is conditioned on the frame that asked for it and SDP's buffer
   rolls by exactly Ta ticks per chunk.
3. :meth:`ActionStreamer.tick` returns the action intended for this tick, or a HOLD of the last
   commanded position when none is ready (start-up, a missed deadline, stale inputs). It never
   blocks on inference and only ever holds complete, clean chunks (partly denoised actions never
   leave the policy).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QueuedAction:
    time: float  # intended time of the control tick that should send it
    position: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Command:
    """What one control tick sends: a clean action, or a HOLD of the last commanded position."""

    position: np.ndarray
    hold: bool
    time: float
    future: list[QueuedAction] = field(default_factory=list)  # queued actions after this one
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass
class StreamerCounters:
    sent: int = 0
    holds: int = 0
    starved: int = 0  # holds with an empty queue
    late_dropped: int = 0  # actions whose tick passed before they were ready
    replaced: int = 0  # queued actions superseded by a newer chunk
    rejected_chunks: int = 0  # chunks with NaN/inf (never queued)


class ActionStreamer:
    """A time-indexed queue of clean actions, read once per control tick; thread-safe, never blocks.

    ``push`` splices a chunk in (a newer plan replaces queued actions from its first slot on);
    ``tick`` drops actions whose slot has passed, sends the one due now (within half a period), or
    holds the last commanded position."""

    def __init__(self, period: float, tolerance: float | None = None) -> None:
        if period <= 0:
            raise ValueError(f"period must be > 0, got {period}")
        self.period = float(period)
        self.tolerance = 0.5 * self.period if tolerance is None else float(tolerance)
        self._lock = threading.Lock()
        self._queue: collections.deque[QueuedAction] = collections.deque()
        self.last: np.ndarray | None = None
        self.counters = StreamerCounters()

    def seed(self, position: Sequence[float]) -> None:
        """Forget queued actions; hold `position` (the measured joint state) until actions arrive."""
        q = np.asarray(position, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(q)):
            raise ValueError(f"seed position must be finite, got {q}")
        with self._lock:
            self._queue.clear()
            self.last = q.copy()

    def clear(self) -> None:
        """Drop every queued action (fault, stale inputs handled by the caller); keep holding `last`."""
        with self._lock:
            self._queue.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def covers(self, t: float) -> bool:
        """Whether an action is queued for the tick at time `t` or later."""
        with self._lock:
            return bool(self._queue) and self._queue[-1].time >= t - self.tolerance

    def push(self, t0: float, actions: np.ndarray, meta: Mapping[str, Any] | None = None) -> int:
        """Queue `actions` (n, D) intended for t0, t0 + period, ...; returns how many were queued.

        A chunk containing NaN/inf is rejected whole (counted, nothing queued)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"actions must be (n, D) with n >= 1, got {a.shape}")
        if not np.all(np.isfinite(a)):
            with self._lock:
                self.counters.rejected_chunks += 1
            return 0
        with self._lock:
            if self.last is not None and a.shape[1] != self.last.shape[0]:
                raise ValueError(f"actions have {a.shape[1]} dims, the streamer holds {self.last.shape[0]}")
            kept = [q for q in self._queue if q.time < t0 - self.tolerance]
            self.counters.replaced += len(self._queue) - len(kept)
            self._queue = collections.deque(kept)
            for i, row in enumerate(a):
                m = dict(meta or {})
                m["index"] = i
                self._queue.append(QueuedAction(t0 + i * self.period, row.copy(), m))
        return a.shape[0]

    def tick(self, now: float) -> Command:
        """The command for the control tick at `now` (never blocks on inference)."""
        with self._lock:
            while self._queue and self._queue[0].time < now - self.tolerance:
                self._queue.popleft()
                self.counters.late_dropped += 1
            if self._queue and self._queue[0].time <= now + self.tolerance:
                q = self._queue.popleft()
                self.last = q.position.copy()
                self.counters.sent += 1
                return Command(q.position.copy(), False, now, list(self._queue), q.meta)
            if self.last is None:
                raise RuntimeError("ActionStreamer.tick before seed(): no position to hold")
            self.counters.holds += 1
            if not self._queue:
                self.counters.starved += 1
                reason = "no clean action ready"
            else:
                reason = "next action is not due yet"
            return Command(self.last.copy(), True, now, [], {}, reason)
