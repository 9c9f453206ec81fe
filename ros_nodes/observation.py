"""Observation sync (no rclpy): sensor messages -> the policy's observation, one sample per control tick.

Messages are matched to the checkpoint by joint *name*; out-of-order and duplicate header stamps are
dropped and counted (``last_drop`` says why the latest one was); a stream older than its max age makes
the tick's sample stale (no new input), so the policy's To-step history is spaced exactly one control
period apart, as in training. Images are decoded from ``sensor_msgs/Image`` payloads without cv_bridge.

The ``*_msg`` methods take the ROS messages themselves, duck-typed on their field names, so rclpy
messages (the policy node, the recorder) and the message objects of a bag reader (``rosbags``, the bag
converter) go through the same code and give the same arrays.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
JOINT_FIELDS = ("position", "velocity", "effort")


class SyncError(ValueError):
    """A sensor message that cannot be used (missing joints, wrong size, bad encoding)."""


def stamp_seconds(stamp: Any) -> float:
    """A ``builtin_interfaces/Time`` (``sec``, ``nanosec``) in seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


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
        self.last_drop = ""  # why the latest dropped message was dropped (for logs and bag errors)
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
                self.last_drop = f"duplicate header stamp {stamp:.6f}"
            else:
                self.counters.out_of_order += 1
                self.last_drop = f"header stamp {stamp:.6f} is older than the previous one ({last:.6f})"
            return False
        return True

    def _reject(self, why: str) -> bool:
        self.counters.rejected += 1
        self.last_drop = why
        return False

    def _nonfinite(self) -> bool:
        self.counters.nonfinite += 1
        self.last_drop = "non-finite values (NaN/inf, or too large for float32)"
        return False

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
        except SyncError as e:
            return self._reject(str(e))
        if not all(_finite32(v) for v in data.values()):
            return self._nonfinite()
        self._joint = StreamSample(stamp, data)
        self._accept("joint_states", stamp)
        return True

    def add_extra(self, name: str, stamp: float, values: Sequence[float]) -> bool:
        """An extra state entry (already reduced to its fields)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size != self.layout.extra(name).dim:
            return self._reject(f"{v.size} values for extra state {name!r}, which has {self.layout.extra(name).dim}")
        if not self._order_ok("extra:" + name, stamp):
            return False
        if not _finite32(v):
            return self._nonfinite()
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

    # -- ROS messages (rclpy or bag-reader objects: only field names are used) -------------------
    def add_joint_state_msg(self, msg: Any, stamp: float | None = None) -> bool:
        """A ``sensor_msgs/JointState``; `stamp` replaces its header stamp (seconds) when given."""
        t = stamp_seconds(msg.header.stamp) if stamp is None else stamp
        return self.add_joint_state(t, msg.name, msg.position, msg.velocity, msg.effort)

    def add_extra_msg(self, name: str, msg: Any, stamp: float | None = None) -> bool:
        """A ``geometry_msgs/PointStamped`` feeding extra state `name` (its configured fields, in order)."""
        t = stamp_seconds(msg.header.stamp) if stamp is None else stamp
        return self.add_extra(name, t, [getattr(msg.point, c) for c in self.layout.extra(name).fields])

    def add_image_msg(
        self,
        camera: str,
        msg: Any,
        expected_hw: tuple[int, int] | None = None,
        channels: int = 3,
        stamp: float | None = None,
    ) -> bool:
        """A ``sensor_msgs/Image`` of `camera`, decoded (:func:`decode_image`); a bad payload is rejected."""
        try:
            img = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, expected_hw, channels)
        except SyncError as e:
            return self._reject(f"camera {camera!r}: {e}")
        return self.add_image(camera, stamp_seconds(msg.header.stamp) if stamp is None else stamp, img)

    # -- per-tick sample -----------------------------------------------------------------------
    @property
    def joint_positions(self) -> np.ndarray | None:
        """Latest measured joint positions in the checkpoint's order (seeds the buffer on activate)."""
        j = self._joint
        return None if j is None else j.data["position"].copy()

    @property
    def joint_stamp(self) -> float | None:
        j = self._joint
        return None if j is None else j.stamp

    def _stale(self, reason: str) -> SyncResult:
        self.counters.stale += 1
        return SyncResult(None, reason=reason)

    def _assemble(self, now: float, since: float | None = None) -> tuple[str, dict[str, np.ndarray]]:
        """Why the tick at `now` has no observation ("" when it has one) and the observation. With `since`,
        every stream must also have been measured at or after that time (a re-activation seeds only from
        what was measured after the deactivation)."""
        j = self._joint
        if j is None:
            return "no joint state yet", {}
        if since is not None and j.stamp < since:
            return "no joint state measured since the deactivation yet", {}
        age = now - j.stamp
        if age > self.max_age:
            return f"joint state is stale (age {age:.3f} s > max_obs_age {self.max_age:.3f} s)", {}
        parts = []
        for e in self.layout.entries:
            if e.startswith("joint_state."):
                parts.append(j.data[e.split(".", 1)[1]])
                continue
            x = self._extra.get(e)
            if x is None or (since is not None and x.stamp < since):
                return f"no {e!r} state yet", {}
            if now - x.stamp > self.max_age:
                return f"{e!r} state is stale (age {now - x.stamp:.3f} s > {self.max_age:.3f} s)", {}
            parts.append(x.data)
        obs: dict[str, np.ndarray] = {}
        if parts:
            obs[STATE_KEY] = np.concatenate(parts).astype(np.float32)
        for cam in self.cameras:
            im = self._images.get(cam)
            if im is None or (since is not None and im.stamp < since):
                return f"no image from camera {cam!r} yet", {}
            if now - im.stamp > self.max_image_age:
                return f"camera {cam!r} dropped out (age {now - im.stamp:.3f} s > {self.max_image_age:.3f} s)", {}
            obs[IMAGE_PREFIX + cam] = im.data
        return "", obs

    def missing(self, now: float, since: float | None = None) -> str:
        """What the tick at `now` would lack for an observation ("" when every stream is there and fresh);
        counts nothing. `since`: see :meth:`_assemble`."""
        return self._assemble(now, since)[0]

    def sample(self, now: float) -> SyncResult:
        """The observation of the tick at `now`, or None with the reason (missing or stale stream)."""
        reason, obs = self._assemble(now)
        if reason:
            return self._stale(reason)
        j = self._joint
        assert j is not None
        self.history.append((now, j.stamp))
        return SyncResult(obs, stamp=j.stamp, age=now - j.stamp)

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
