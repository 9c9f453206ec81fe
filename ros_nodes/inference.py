"""The inference worker (no rclpy): runs the policy beside the control loop, in its own thread.

See :mod:`streamdp.ros_nodes.streamer` for how its chunks are timed against the control ticks.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Frame:
    """One control tick's observation handed to the inference worker."""

    obs: dict[str, np.ndarray]
    slot_time: float  # ROS time of the tick that sampled it (the policy's observation time)
    mono: float  # monotonic time of that tick (deadlines)
    source_stamp: float  # header stamp of the joint state it holds
    want_chunk: bool = False


@dataclass
class Chunk:
    actions: np.ndarray  # (Ta, D) clean, un-normalised
    frame: Frame
    nfe: int
    compute_s: float  # wall time from the request to the chunk (queueing included)
    done_mono: float
    levels: np.ndarray | None = None  # the buffer's per-slot grid levels after the chunk (SDP), for ~/noise_levels


class InferenceWorker:
    """Runs the policy beside the control loop, in its own thread.

    Every frame is observed (in order); a frame with ``want_chunk`` starts a chunk solve that spends
    at most ``budget`` network calls per slice (0: unlimited). Frames arriving during a solve are
    observed after it. Callbacks: ``on_chunk(Chunk)`` and ``on_error(Exception, Frame)``; both run in
    the worker thread."""

    def __init__(
        self,
        policy: Any,
        on_chunk: Callable[[Chunk], None],
        on_error: Callable[[BaseException, Frame | None], None] | None = None,
        budget: int = 0,
        name: str = "streamdp-inference",
    ) -> None:
        self.policy = policy
        self.on_chunk = on_chunk
        self.on_error = on_error or (lambda e, f: None)
        self.budget = int(budget)
        self._cv = threading.Condition()
        self._frames: collections.deque[Frame] = collections.deque()
        self._stop = False
        self._busy = False
        self._reset_state: np.ndarray | None = None
        self._reset_pending = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0

    def start(self) -> InferenceWorker:
        self._thread.start()
        return self

    @property
    def busy(self) -> bool:
        """A chunk is requested or being solved (the control tick should not request another)."""
        with self._cv:
            return self._busy or any(f.want_chunk for f in self._frames)

    def submit(self, frame: Frame) -> None:
        """Hand over one tick's frame (returns at once)."""
        with self._cv:
            self._frames.append(frame)
            self._cv.notify()

    def request_reset(self, state: np.ndarray | None = None) -> None:
        """Drop pending frames and reset the policy (from `state`) before the next frame."""
        with self._cv:
            self._frames.clear()
            self._reset_state = None if state is None else np.asarray(state).copy()
            self._reset_pending = True
            self._cv.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._frames or self._reset_pending):
                    self._cv.wait(0.5)
                if self._stop:
                    return
                f: Frame | None = None
                if self._reset_pending:
                    self._reset_pending = False
                    state, self._reset_state = self._reset_state, None
                else:
                    f = self._frames.popleft()
                    self._busy = f.want_chunk
            try:
                if f is None:
                    self.policy.reset(state=state)
                    continue
                self.policy.observe(f.obs, f.slot_time)
                if f.want_chunk:
                    self._solve(f)
            except Exception as e:  # noqa: BLE001 - NaN outputs etc.: reported, the loop goes on
                self.errors += 1
                self.on_error(e, f)
            finally:
                with self._cv:
                    self._busy = False

    def _cancelled(self) -> bool:
        with self._cv:
            return self._stop or self._reset_pending

    def _solve(self, f: Frame) -> None:
        p = self.policy
        calls = 0
        budget = self.budget if self.budget > 0 else None
        while p.num_ready == 0:
            if self._cancelled():
                return
            n = p.denoise(budget)
            calls += n
            if n == 0 and p.num_ready == 0:
                raise RuntimeError("the policy made no progress on a requested chunk")
        actions = p.pop_ready()
        if self._cancelled():
            return
        now = time.monotonic()
        nfe = int(getattr(p, "last_nfe", calls) or calls)
        levels = p.noise_levels()  # a copy, taken in this thread (the policy is this thread's alone)
        self.on_chunk(Chunk(actions, f, nfe, now - f.mono, now, levels))
