"""Safety filter: the last word on every joint command before it is published. Pure Python, no rclpy.

Applied after un-normalisation. Each command is handled in this order:
1. **Finite check.** A NaN or inf command is never passed on. The filter holds and reports FAULT.
2. **Position limits.** The target is clamped into the per-joint position limits.
3. **Motion limits.** The step from the last command is limited by the maximum per-step delta and
   by the velocity limit times dt. The change of that step from the previous one is limited by the
   acceleration limit times dt². So a command never jumps, and never whips.
4. **Workspace box.** This check is optional and needs a forward-kinematics function (for example
   `streamdp.ros_nodes.kinematics.UrdfChain`). A target whose end effector, or whose braking path to
   rest, leaves the box is refused, and the filter holds instead, so the tip stops inside the box.
5. **Escalation.** After `escalate_after` consecutive clamped commands the filter latches HOLDING
   until `reset()`. A policy that keeps asking for the impossible is stopped.
6. **Catching up after a hold.** While the node held (no clean action in time: a starved queue, a late
   chunk), the plan went on; the first actions after the hold are therefore ahead of the arm. Such a
   command is still rate-limited, but it is CATCHING_UP, not a clamp that counts toward escalation, as
   long as (a) the gap to it was within what the arm could have moved during the hold (ticks held + 1
   step limits) and (b) the arm closes the gap (it shrinks, or the arm is still speeding up toward it).
   A position-limit or workspace clamp always counts, and so does the first catch-up step that does not
   close the gap: commands that keep pushing past the limits still escalate.

A hold decelerates within the acceleration limit to zero velocity; it does not stop dead. The limits
come from YAML (`SafetyLimits.from_dict`) or from a URDF (`SafetyLimits.from_urdf`).
"""

from __future__ import annotations

import dataclasses
import enum
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class SafetyStatus(enum.Enum):
    OK = "ok"
    CLAMPED = "clamped"
    HOLDING = "holding"
    STALE = "stale"
    FAULT = "fault"
    CATCHING_UP = "catching_up"  # rate-limited while the arm catches up with the plan after a hold (not a clamp)


class SafetyConfigError(ValueError):
    pass


def _vec(values: Sequence[float] | float | None, n: int, name: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=np.float64)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, float(arr[0]))
    if arr.size != n:
        raise SafetyConfigError(f"safety limit {name!r} has {arr.size} entries for {n} joints")
    if np.isnan(arr).any():
        raise SafetyConfigError(f"safety limit {name!r} contains NaN")
    return arr


@dataclass
class SafetyLimits:
    """Per-joint limits in the checkpoint's joint order; inf means "no limit" for that quantity."""

    joint_names: list[str]
    position_lower: np.ndarray
    position_upper: np.ndarray
    max_velocity: np.ndarray  # rad/s (or m/s)
    max_acceleration: np.ndarray  # rad/s^2
    max_delta: np.ndarray  # largest change between two consecutive commands
    dt: float  # control period, s
    workspace_lower: np.ndarray | None = None
    workspace_upper: np.ndarray | None = None
    escalate_after: int = 10

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if n == 0:
            raise SafetyConfigError("safety limits need at least one joint name")
        if self.dt <= 0 or not np.isfinite(self.dt):
            raise SafetyConfigError(f"control period dt must be > 0, got {self.dt}")
        # Unset means unlimited: -inf for the lower position limit, +inf for everything else.
        for name in ("position_lower", "position_upper", "max_velocity", "max_acceleration", "max_delta"):
            setattr(self, name, _vec(getattr(self, name), n, name, -np.inf if name == "position_lower" else np.inf))
        if np.any(self.position_lower > self.position_upper):
            raise SafetyConfigError("position_lower exceeds position_upper for some joint")
        for name in ("max_velocity", "max_acceleration", "max_delta"):
            if np.any(getattr(self, name) <= 0):
                raise SafetyConfigError(f"{name} must be > 0 for every joint")
        if (self.workspace_lower is None) != (self.workspace_upper is None):
            raise SafetyConfigError("give both workspace_lower and workspace_upper, or neither")
        if self.workspace_lower is not None:
            self.workspace_lower = np.asarray(self.workspace_lower, dtype=np.float64)
            self.workspace_upper = np.asarray(self.workspace_upper, dtype=np.float64)
            if self.workspace_lower.shape != self.workspace_upper.shape or self.workspace_lower.ndim != 1:
                raise SafetyConfigError("workspace_lower and workspace_upper need the same number of axes")
            if not (np.isfinite(self.workspace_lower).all() and np.isfinite(self.workspace_upper).all()):
                raise SafetyConfigError("workspace box bounds must be finite")
            if np.any(self.workspace_lower >= self.workspace_upper):
                raise SafetyConfigError("workspace_lower must be below workspace_upper on every axis")
        if self.escalate_after < 1:
            raise SafetyConfigError("escalate_after must be >= 1")

    @property
    def step_limit(self) -> np.ndarray:
        """Largest allowed change between consecutive commands: min(max_delta, v_max * dt)."""
        return np.minimum(self.max_delta, self.max_velocity * self.dt)

    @classmethod
    def from_dict(cls, d: Mapping, joint_names: Sequence[str] | None = None, dt: float | None = None) -> SafetyLimits:
        """From a YAML mapping: joint_names, position_lower/upper, max_velocity, max_acceleration,
        max_delta (scalars apply to every joint), dt or control_rate_hz, optional workspace box."""
        known = {
            "joint_names", "position_lower", "position_upper", "max_velocity", "max_acceleration", "max_delta",
            "dt", "control_rate_hz", "workspace_lower", "workspace_upper", "escalate_after", "urdf",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise SafetyConfigError(f"unknown safety keys {unknown}; known: {sorted(known)}")
        names = list(d.get("joint_names") or joint_names or [])
        if d.get("dt") is not None:
            period = float(d["dt"])
        elif d.get("control_rate_hz") is not None:
            period = 1.0 / float(d["control_rate_hz"])
        elif dt is not None:
            period = dt
        else:
            raise SafetyConfigError("safety limits need dt or control_rate_hz")
        base = cls.from_urdf(d["urdf"], names, period) if d.get("urdf") else None
        n = len(names)

        def pick(key: str, fallback: np.ndarray | None) -> np.ndarray | None:
            if d.get(key) is not None:
                return _vec(d[key], n, key, np.inf)
            return fallback

        return cls(
            joint_names=names,
            position_lower=pick("position_lower", base.position_lower if base else None),
            position_upper=pick("position_upper", base.position_upper if base else None),
            max_velocity=pick("max_velocity", base.max_velocity if base else None),
            max_acceleration=pick("max_acceleration", None),
            max_delta=pick("max_delta", None),
            dt=period,
            workspace_lower=d.get("workspace_lower"),
            workspace_upper=d.get("workspace_upper"),
            escalate_after=int(d.get("escalate_after", 10)),
        )

    @classmethod
    def from_urdf(cls, urdf: str | Path, joint_names: Sequence[str], dt: float) -> SafetyLimits:
        """Position and velocity limits from the URDF's <joint><limit .../></joint> elements."""
        text = Path(urdf).read_text() if Path(str(urdf)).exists() else str(urdf)
        try:
            root = ET.fromstring(text)
        except ET.ParseError as e:
            raise SafetyConfigError(f"URDF {urdf} is not valid XML: {e}") from e
        joints = {j.get("name"): j for j in root.iter("joint")}
        lo, hi, vel = [], [], []
        for name in joint_names:
            if name not in joints:
                raise SafetyConfigError(f"joint {name!r} not in URDF (has {sorted(k for k in joints if k)})")
            lim = joints[name].find("limit")
            if joints[name].get("type") == "continuous" or lim is None:
                lo.append(-np.inf)
                hi.append(np.inf)
            else:
                lo.append(float(lim.get("lower", "-inf")))
                hi.append(float(lim.get("upper", "inf")))
            vel.append(float(lim.get("velocity", "inf")) if lim is not None else np.inf)
        return cls(list(joint_names), np.array(lo), np.array(hi), np.array(vel), None, None, dt)  # type: ignore[arg-type]


@dataclass
class SafetyFilter:
    """Stateful filter over the command stream of one arm (see the module docstring)."""

    limits: SafetyLimits
    fk: Callable[[np.ndarray], np.ndarray] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in SafetyStatus})
    status: SafetyStatus = SafetyStatus.HOLDING
    consecutive_clamps: int = 0
    _last: np.ndarray | None = None  # last published command
    _last_step: np.ndarray | None = None  # last published change (per control period)
    _latched: bool = False
    _held: int = 0  # hold() calls since the last filter() (ticks the arm was held while the plan went on)
    _catching_up: bool = False  # resumed after a hold with a gap the hold explains; cleared once caught up
    _gap: float | None = None  # the catch-up gap after the last step (it must shrink)

    def reset(self, measured: Sequence[float]) -> None:
        """Seed from the measured joint state (activation / re-activation): the first command starts there."""
        q = np.asarray(measured, dtype=np.float64).reshape(-1)
        if q.size != len(self.limits.joint_names) or not np.isfinite(q).all():
            raise ValueError(f"reset needs {len(self.limits.joint_names)} finite joint positions, got {q.tolist()}")
        self._last = q.copy()
        self._last_step = np.zeros_like(q)
        self._latched = False
        self.consecutive_clamps = 0
        self._held, self._catching_up, self._gap = 0, False, None
        self.status = SafetyStatus.OK

    @property
    def latched(self) -> bool:
        """Escalated to a hold (too many consecutive clamps) until the next ``reset()``."""
        return self._latched

    @property
    def last_command(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError("safety filter not seeded: call reset(measured_joint_positions) first")
        return self._last.copy()

    def fork(self) -> SafetyFilter:
        """A filter continuing from this one's state that leaves it untouched (to chain look-ahead points).

        Limits and FK are shared, not copied: they never change, and this runs every control tick.
        (The state arrays are replaced, never written in place, so sharing them is safe too.)"""
        return dataclasses.replace(self, counts=dict(self.counts))

    def _bounded_step(self, want: np.ndarray, last: np.ndarray | None = None,
                      last_step: np.ndarray | None = None) -> np.ndarray:
        """Limit the step (per period) by delta/velocity, and its change by acceleration (from the filter's
        state, or from a hypothetical ``last`` / ``last_step``)."""
        lim = self.limits
        last = self._last if last is None else last
        last_step = self._last_step if last_step is None else last_step
        assert last is not None and last_step is not None
        step = np.clip(want, -lim.step_limit, lim.step_limit)
        dv = lim.max_acceleration * lim.dt * lim.dt
        # Brake before a position limit: from a step s, decelerating by dv per tick covers at most
        # s^2/(2 dv) + s, so cap s where that would overrun the remaining distance. The cap sequence stays
        # reachable within the acceleration limit, so the arm never meets a limit at speed.
        up = np.maximum(lim.position_upper - last, 0.0)
        down = np.maximum(last - lim.position_lower, 0.0)
        with np.errstate(invalid="ignore"):
            cap_up = np.where(np.isfinite(dv), -dv + np.sqrt(dv * dv + 2 * dv * up), up)
            cap_down = np.where(np.isfinite(dv), -dv + np.sqrt(dv * dv + 2 * dv * down), down)
        cap_up = np.where(np.isnan(cap_up), np.inf, cap_up)
        cap_down = np.where(np.isnan(cap_down), np.inf, cap_down)
        step = np.clip(step, -cap_down, cap_up)
        return np.clip(step, last_step - dv, last_step + dv)

    def _emit(self, step: np.ndarray, status: SafetyStatus) -> tuple[np.ndarray, SafetyStatus]:
        assert self._last is not None
        q = np.clip(self._last + step, self.limits.position_lower, self.limits.position_upper)
        self._last_step = q - self._last
        self._last = q
        self.status = status
        self.counts[status.value] += 1
        return q.copy(), status

    def hold(self, status: SafetyStatus = SafetyStatus.HOLDING) -> tuple[np.ndarray, SafetyStatus]:
        """Decelerate toward zero velocity within the acceleration limit (a smooth stop), and hold. The caller
        had no command for this tick: the commands after it may catch up (see the module docstring, 6)."""
        out = self._brake(status)
        self._held += 1
        return out

    def _brake(self, status: SafetyStatus) -> tuple[np.ndarray, SafetyStatus]:
        """One tick of decelerating toward rest (a hold, or a refused command)."""
        if self._last is None:
            raise RuntimeError("safety filter not seeded: call reset(measured_joint_positions) first")
        return self._emit(self._bounded_step(np.zeros_like(self._last)), status)

    def _closing_in(self, target: np.ndarray, step: np.ndarray) -> bool:
        """Catching up: the gap to the target shrinks, or the arm is still speeding up toward it."""
        assert self._last is not None and self._last_step is not None
        gap = float(np.max(np.abs(target - (self._last + step))))
        speeding_up = float(np.max(np.abs(step))) > float(np.max(np.abs(self._last_step))) + 1e-12
        ok = self._gap is None or gap < self._gap - 1e-12 or speeding_up
        self._gap = gap
        return ok

    def filter(self, command: Sequence[float]) -> tuple[np.ndarray, SafetyStatus]:
        """The command to publish for this tick and why. Never returns a non-finite or out-of-limit value."""
        if self._last is None:
            raise RuntimeError("safety filter not seeded: call reset(measured_joint_positions) first")
        q = np.asarray(command, dtype=np.float64).reshape(-1)
        if q.size != self._last.size or not np.isfinite(q).all():
            return self._brake(SafetyStatus.FAULT)
        if self._latched:
            return self._brake(SafetyStatus.HOLDING)
        held, self._held = self._held, 0
        target = np.clip(q, self.limits.position_lower, self.limits.position_upper)
        position_clamped = not np.array_equal(target, q)
        want = target - self._last
        step = self._bounded_step(want)
        motion_clamped = not np.allclose(step, want, rtol=0, atol=1e-12)
        if held:  # resuming after a hold: a gap up to what the arm could have moved meanwhile is expected
            credit = (held + 1) * self.limits.step_limit
            self._catching_up, self._gap = bool(np.all(np.abs(want) <= credit + 1e-12)), None
        if self.fk is not None and self.limits.workspace_lower is not None:
            # The commanded pose and every pose of braking from it to rest must be inside the box: a hold
            # decelerates rather than stops dead, so a check of the pose alone would let the stopping
            # distance carry the tip out.
            if not all(self.in_workspace(q) for q in self._braking_path(step)):
                self._catching_up = False
                self.consecutive_clamps += 1
                self._maybe_latch()
                return self._brake(SafetyStatus.CLAMPED if not self._latched else SafetyStatus.HOLDING)
        if position_clamped or motion_clamped:
            if not position_clamped and self._catching_up and self._closing_in(target, step):
                return self._emit(step, SafetyStatus.CATCHING_UP)  # not a clamp: the count stays as it was
            self._catching_up = False
            self.consecutive_clamps += 1
            self._maybe_latch()
            return self._emit(step, SafetyStatus.HOLDING if self._latched else SafetyStatus.CLAMPED)
        self.consecutive_clamps = 0
        self._catching_up = False
        return self._emit(step, SafetyStatus.OK)

    def in_workspace(self, q: np.ndarray, tol: float = 0.0) -> bool:
        """The tip of joint positions ``q`` lies in the workspace box (True when no box or no FK is set)."""
        lim = self.limits
        if self.fk is None or lim.workspace_lower is None or lim.workspace_upper is None:
            return True
        ee = np.asarray(self.fk(q), dtype=np.float64).reshape(-1)
        if ee.shape != lim.workspace_lower.shape:
            raise SafetyConfigError(f"workspace box has {lim.workspace_lower.size} axes, FK gives {ee.size}")
        return bool(np.all(ee >= lim.workspace_lower - tol) and np.all(ee <= lim.workspace_upper + tol))

    def _braking_path(self, step: np.ndarray, max_ticks: int = 1000) -> list[np.ndarray]:
        """Every pose of taking ``step`` now and then holding (decelerating as ``hold()`` does) to rest."""
        assert self._last is not None
        lo, hi = self.limits.position_lower, self.limits.position_upper
        q = np.clip(self._last + step, lo, hi)
        s = q - self._last
        path = [q]
        for _ in range(max_ticks):
            if not np.any(s):
                break
            nxt = np.clip(q + self._bounded_step(np.zeros_like(s), q, s), lo, hi)
            q, s = nxt, nxt - q
            path.append(q)
        return path

    def _maybe_latch(self) -> None:
        if self.consecutive_clamps >= self.limits.escalate_after:
            self._latched = True
