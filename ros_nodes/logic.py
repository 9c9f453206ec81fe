"""Pure-Python logic of the ROS nodes (no rclpy): unit-tested on its own.

Timing model of ``policy_node`` (DESIGN.md 3). A control timer ticks at the checkpoint's fps with
tick times tau_k. At each tick:

1. :class:`ObservationSync` samples the newest sensor data (zero-order hold). Messages are matched
   to the checkpoint by joint *name*; out-of-order and duplicate header stamps are dropped and
   counted; a stream older than its max age makes the sample stale (no new input this tick). The
   policy's To-step history is therefore spaced exactly one control period apart, as in training.
2. The frame goes to the :class:`InferenceWorker` thread (never waited on). When the
   :class:`ActionStreamer` will run out of actions, the frame also requests a chunk: its Ta clean
   actions are intended for ticks tau_{k+d} ... tau_{k+d+Ta-1} (d = ``action_delay_ticks``, the
   inference deadline in ticks). Frames that arrive while a chunk is being solved are observed after
   it, in order, so every chunk is conditioned on the frame that asked for it and SDP's buffer rolls
   by exactly Ta ticks per chunk.
3. :meth:`ActionStreamer.tick` returns the action intended for this tick, or a HOLD of the last
   commanded position when none is ready (start-up, a missed deadline, stale inputs). It never
   blocks on inference and only ever holds complete, clean chunks (partly denoised actions never
   leave the policy).

:func:`trajectory_points` turns the command plus the queued future actions into JointTrajectory
points (positions and velocities, strictly increasing time_from_start), :class:`RollingStats` and
:class:`TickStats` feed ``/diagnostics``.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
JOINT_FIELDS = ("position", "velocity", "effort")


class SyncError(ValueError):
    """A sensor message that cannot be used (missing joints, wrong size, bad encoding)."""


# ---------------------------------------------------------------------------------------------- joints
def select_joints(msg_names: Sequence[str], values: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """Values of `wanted` joints, in `wanted`'s order, from a message listing `msg_names`.

    Raises SyncError naming the missing joints (or when `values` does not match `msg_names`)."""
    if len(values) != len(msg_names):
        raise SyncError(f"{len(values)} values for {len(msg_names)} joint names")
    index = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        raise SyncError(f"joint state lacks {missing} (has {list(msg_names)})")
    v = np.asarray(values, dtype=np.float64)
    return v[[index[n] for n in wanted]]


_F32_MAX = float(np.finfo(np.float32).max)


def _finite32(v: np.ndarray) -> bool:
    """Finite, and still finite as float32 (observations are float32: 1e39 would become inf)."""
    return bool(np.all(np.isfinite(v)) and np.all(np.abs(v) <= _F32_MAX))


@dataclass(frozen=True)
class ExtraState:
    """A state entry that comes from its own topic (e.g. the target position of a reach task)."""

    name: str
    topic: str
    fields: str = "xy"  # which PointStamped components, in order

    def __post_init__(self) -> None:
        if not self.fields or any(c not in "xyz" for c in self.fields):
            raise ValueError(f"extra state {self.name!r}: fields must be letters of 'xyz', got {self.fields!r}")

    @property
    def dim(self) -> int:
        return len(self.fields)


@dataclass(frozen=True)
class StateLayout:
    """How ``observation.state`` is assembled, entry by entry, as the checkpoint's task defines it.

    Entries: ``joint_state.position`` / ``joint_state.velocity`` / ``joint_state.effort`` (one value
    per checkpoint joint, in the checkpoint's joint order) or the name of an :class:`ExtraState`."""

    joint_names: tuple[str, ...]
    entries: tuple[str, ...] = ("joint_state.position", "joint_state.velocity")
    extras: tuple[ExtraState, ...] = ()

    def __post_init__(self) -> None:
        names = {e.name for e in self.extras}
        if len(names) != len(self.extras):
            raise ValueError(f"duplicate extra state names: {[e.name for e in self.extras]}")
        for e in self.entries:
            if e.startswith("joint_state."):
                if e.split(".", 1)[1] not in JOINT_FIELDS:
                    raise ValueError(f"state layout entry {e!r}: use joint_state.{{{','.join(JOINT_FIELDS)}}}")
            elif e not in names:
                raise ValueError(f"state layout entry {e!r} is neither joint_state.<field> nor an extra state "
                                 f"(extras: {sorted(names)})")
        if len(set(self.entries)) != len(self.entries):
            raise ValueError(f"state layout repeats an entry: {list(self.entries)}")

    @property
    def joint_fields(self) -> list[str]:
        return [e.split(".", 1)[1] for e in self.entries if e.startswith("joint_state.")]

    @property
    def dim(self) -> int:
        extras = {e.name: e.dim for e in self.extras}
        return sum(len(self.joint_names) if e.startswith("joint_state.") else extras[e] for e in self.entries)

    def extra(self, name: str) -> ExtraState:
        return next(e for e in self.extras if e.name == name)


@dataclass
class StreamSample:
    stamp: float  # header stamp, seconds
    data: Any


@dataclass
class SyncResult:
    """What one control tick sees: an observation (or None and why) and the joint-state stamp."""

    obs: dict[str, np.ndarray] | None
    stamp: float | None = None
    age: float | None = None
    reason: str = ""


@dataclass
class SyncCounters:
    out_of_order: int = 0
    duplicate: int = 0
    rejected: int = 0  # missing joints, wrong sizes, bad encodings, NaN/inf
    nonfinite: int = 0
    stale: int = 0  # ticks without a usable observation
    accepted: int = 0


class ObservationSync:
    """Latest sample per sensor stream, checked for ordering and age, assembled per control tick."""

    def __init__(
        self,
        layout: StateLayout,
        cameras: Sequence[str] = (),
        max_age: float = 0.25,
        max_image_age: float | None = None,
        history: int = 2,
    ) -> None:
        self.layout = layout
        self.cameras = list(cameras)
        self.max_age = float(max_age)
        self.max_image_age = float(max_age if max_image_age is None else max_image_age)
        self.counters = SyncCounters()
        self.history: collections.deque[tuple[float, float]] = collections.deque(maxlen=max(1, history))
        self.reset()

    def reset(self) -> None:
        """Forget every sample and the history (clock jump, re-activation)."""
        self._joint: StreamSample | None = None
        self._extra: dict[str, StreamSample] = {}
        self._images: dict[str, StreamSample] = {}
        self._last_stamp: dict[str, float] = {}
        self.history.clear()

    # -- ingestion -----------------------------------------------------------------------------
    def _order_ok(self, stream: str, stamp: float) -> bool:
        last = self._last_stamp.get(stream)
        if last is not None and stamp <= last:
            if stamp == last:
                self.counters.duplicate += 1
            else:
                self.counters.out_of_order += 1
            return False
        return True

    def _accept(self, stream: str, stamp: float) -> None:
        self._last_stamp[stream] = stamp
        self.counters.accepted += 1

    def add_joint_state(
        self,
        stamp: float,
        names: Sequence[str],
        position: Sequence[float] = (),
        velocity: Sequence[float] = (),
        effort: Sequence[float] = (),
    ) -> bool:
        """A JointState message; False (and counted) when dropped."""
        if not self._order_ok("joint_states", stamp):
            return False
        arrays = {"position": position, "velocity": velocity, "effort": effort}
        try:
            data = {f: select_joints(names, arrays[f], self.layout.joint_names)
                    for f in {"position", *self.layout.joint_fields}}
        except SyncError:
            self.counters.rejected += 1
            return False
        if not all(_finite32(v) for v in data.values()):
            self.counters.nonfinite += 1
            return False
        self._joint = StreamSample(stamp, data)
        self._accept("joint_states", stamp)
        return True

    def add_extra(self, name: str, stamp: float, values: Sequence[float]) -> bool:
        """An extra state entry (already reduced to its fields)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size != self.layout.extra(name).dim:
            self.counters.rejected += 1
            return False
        if not self._order_ok("extra:" + name, stamp):
            return False
        if not _finite32(v):
            self.counters.nonfinite += 1
            return False
        self._extra[name] = StreamSample(stamp, v)
        self._accept("extra:" + name, stamp)
        return True

    def add_image(self, camera: str, stamp: float, image: np.ndarray) -> bool:
        """A decoded HWC uint8 image of `camera`."""
        if not self._order_ok("image:" + camera, stamp):
            return False
        self._images[camera] = StreamSample(stamp, image)
        self._accept("image:" + camera, stamp)
        return True

    # -- per-tick sample -----------------------------------------------------------------------
    @property
    def joint_positions(self) -> np.ndarray | None:
        """Latest measured joint positions in the checkpoint's order (seeds the buffer on activate)."""
        return None if self._joint is None else self._joint.data["position"].copy()

    @property
    def joint_stamp(self) -> float | None:
        return None if self._joint is None else self._joint.stamp

    def _stale(self, reason: str) -> SyncResult:
        self.counters.stale += 1
        return SyncResult(None, reason=reason)

    def sample(self, now: float) -> SyncResult:
        """The observation of the tick at `now`, or None with the reason (missing or stale stream)."""
        j = self._joint
        if j is None:
            return self._stale("no joint state yet")
        age = now - j.stamp
        if age > self.max_age:
            return self._stale(f"joint state is stale (age {age:.3f} s > max_obs_age {self.max_age:.3f} s)")
        parts = []
        for e in self.layout.entries:
            if e.startswith("joint_state."):
                parts.append(j.data[e.split(".", 1)[1]])
                continue
            x = self._extra.get(e)
            if x is None:
                return self._stale(f"no {e!r} state yet")
            if now - x.stamp > self.max_age:
                return self._stale(f"{e!r} state is stale (age {now - x.stamp:.3f} s > {self.max_age:.3f} s)")
            parts.append(x.data)
        obs: dict[str, np.ndarray] = {}
        if parts:
            obs[STATE_KEY] = np.concatenate(parts).astype(np.float32)
        for cam in self.cameras:
            im = self._images.get(cam)
            if im is None:
                return self._stale(f"no image from camera {cam!r} yet")
            if now - im.stamp > self.max_image_age:
                return self._stale(
                    f"camera {cam!r} dropped out (age {now - im.stamp:.3f} s > {self.max_image_age:.3f} s)"
                )
            obs[IMAGE_PREFIX + cam] = im.data
        self.history.append((now, j.stamp))
        return SyncResult(obs, stamp=j.stamp, age=age)

    def history_spacing(self) -> list[float]:
        """Gaps between the sample times of the kept history (one control period when healthy)."""
        t = [h[0] for h in self.history]
        return [b - a for a, b in zip(t, t[1:])]


# ---------------------------------------------------------------------------------------------- images
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def decode_image(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: bytes | bytearray | memoryview | Sequence[int] | np.ndarray,
    expected_hw: tuple[int, int] | None = None,
    channels: int = 3,
) -> np.ndarray:
    """A sensor_msgs/Image payload as an RGB (or mono) HWC uint8 array, without cv_bridge.

    Respects the row stride `step` (rows may be padded), converts BGR(A) to RGB, drops alpha,
    repeats mono to 3 channels when `channels` is 3. Raises SyncError on any size mismatch."""
    enc = encoding.lower()
    if enc not in _CHANNELS:
        raise SyncError(f"unsupported image encoding {encoding!r} (use one of {sorted(_CHANNELS)})")
    c = _CHANNELS[enc]
    if height <= 0 or width <= 0:
        raise SyncError(f"empty image {height}x{width}")
    if expected_hw is not None and (height, width) != tuple(expected_hw):
        raise SyncError(f"image is {height}x{width}, the checkpoint expects {expected_hw[0]}x{expected_hw[1]}")
    row = width * c
    if step < row:
        raise SyncError(f"step {step} is shorter than a row of {width}x{c} bytes")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8)
    buf = buf.reshape(-1)
    if buf.size < step * (height - 1) + row:
        raise SyncError(f"image data has {buf.size} bytes, {height} rows of step {step} need {step * height}")
    if buf.size < step * height:
        buf = np.concatenate([buf, np.zeros(step * height - buf.size, np.uint8)])
    img = buf[: step * height].reshape(height, step)[:, :row].reshape(height, width, c)
    if enc.startswith("bgr"):
        img = img[..., [2, 1, 0, 3][:c]]
    if c == 4:
        img = img[..., :3]
    if img.shape[2] == 1 and channels == 3:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 3 and channels == 1:
        img = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)[..., None]
    return np.ascontiguousarray(img)


def encode_rgb8(image: np.ndarray) -> tuple[int, int, int, bytes]:
    """(height, width, step, data) of an HWC uint8 RGB array as an rgb8 Image payload."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8, got {img.shape}")
    h, w, _ = img.shape
    return h, w, 3 * w, img.tobytes()


# ---------------------------------------------------------------------------------------------- streamer
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


# ---------------------------------------------------------------------------------------------- trajectory
@dataclass
class TrajPoint:
    positions: np.ndarray
    velocities: np.ndarray
    time_from_start: float


def trajectory_points(
    positions: np.ndarray, period: float, start: np.ndarray | None = None, first_time: float | None = None
) -> list[TrajPoint]:
    """JointTrajectory points for consecutive position targets one `period` apart.

    Point i is at time_from_start = first_time + i * period (first_time defaults to one period: the
    first target is reached by the end of the current control step). Velocities are central finite
    differences (the first uses `start`, the position at the splice time, when given; the last point
    is 0 so the arm comes to rest if no newer trajectory arrives)."""
    p = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    if p.shape[0] == 0:
        raise ValueError("a trajectory needs at least one point")
    if period <= 0:
        raise ValueError(f"period must be > 0, got {period}")
    t0 = period if first_time is None else float(first_time)
    if t0 <= 0:
        raise ValueError(f"the first point must lie after the splice time, got time_from_start {t0}")
    times = t0 + period * np.arange(p.shape[0])
    pts = np.vstack([start.reshape(1, -1), p]) if start is not None else p
    tt = np.concatenate([[0.0], times]) if start is not None else times
    off = 1 if start is not None else 0
    out = []
    for i in range(p.shape[0]):
        j = i + off
        if i == p.shape[0] - 1:
            v = np.zeros(p.shape[1])
        else:
            lo = max(j - 1, 0)
            v = (pts[j + 1] - pts[lo]) / (tt[j + 1] - tt[lo])
        out.append(TrajPoint(p[i].copy(), v, float(times[i])))
    assert all(b.time_from_start > a.time_from_start for a, b in zip(out, out[1:]))
    return out


def split_seconds(t: float) -> tuple[int, int]:
    """(sec, nanosec) of a non-negative duration or stamp in seconds."""
    ns = int(round(t * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000


class TrajectorySampler:
    """Evaluates a received JointTrajectory in time, like a position controller would (sim bridge).

    Points are (absolute time, positions); before the first point it interpolates from the position
    held at the splice time; after the last point it holds the last point."""

    def __init__(self, splice_time: float, start: np.ndarray, times: Sequence[float], points: np.ndarray) -> None:
        t = np.asarray(times, dtype=np.float64)
        if t.size == 0 or np.any(np.diff(t) <= 0):
            raise ValueError("trajectory times must be strictly increasing and non-empty")
        if t[0] < splice_time:
            # Points already in the past at splice time: keep the later ones only (as JTC does).
            keep = t >= splice_time
            if not np.any(keep):
                raise ValueError("every trajectory point lies before its start time")
            t, points = t[keep], np.asarray(points)[keep]
        self.t = np.concatenate([[splice_time], t])
        self.p = np.vstack([np.asarray(start, dtype=np.float64).reshape(1, -1), np.asarray(points, np.float64)])

    def __call__(self, t: float) -> np.ndarray:
        if t <= self.t[0]:
            return self.p[0].copy()
        if t >= self.t[-1]:
            return self.p[-1].copy()
        i = int(np.searchsorted(self.t, t, side="right")) - 1
        w = (t - self.t[i]) / (self.t[i + 1] - self.t[i])
        return (1 - w) * self.p[i] + w * self.p[i + 1]


# ---------------------------------------------------------------------------------------------- stats
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


# ---------------------------------------------------------------------------------------------- inference
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
        self.frames_observed = 0
        self.chunks = 0
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
                self.frames_observed += 1
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
        self.chunks += 1
        nfe = int(getattr(p, "last_nfe", calls) or calls)
        self.on_chunk(Chunk(actions, f, nfe, now - f.mono, now))
