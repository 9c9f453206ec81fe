"""An independent check of published joint commands against raw limit numbers (the safety oracle).

The fault-injection tests, the safety filter's tests and ``streamdp-soak`` judge every published command
with it. It shares no code with :class:`~streamdp.ros_nodes.safety.SafetyFilter`: the limits are the
numbers of a parameter file (``position_min`` / ``position_max`` / ``max_delta`` / ``max_velocity`` /
``max_acceleration`` per joint, the control period, an optional workspace box), URDF limits are read
here from the XML, and the workspace test uses the URDF chain's forward kinematics (itself checked
against MuJoCo in tests/safety). A filter whose own check were wrong could not pass its tests here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _per_joint(v: float | Sequence[float] | None, n: int, default: float) -> np.ndarray:
    if v is None:
        return np.full(n, default)
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    return np.full(n, float(a[0])) if a.size == 1 else a


def urdf_limits(urdf: str | Path, joints: Sequence[str]) -> dict[str, list[float]]:
    """position_min / position_max / max_velocity of `joints` from a URDF's <limit> elements."""
    root = ET.fromstring(Path(urdf).read_text())
    by_name = {j.get("name"): j for j in root.iter("joint")}
    lo, hi, vel = [], [], []
    for name in joints:
        j = by_name[name]
        lim = j.find("limit")
        free = j.get("type") == "continuous" or lim is None
        lo.append(-np.inf if free else float(lim.get("lower", "-inf")))
        hi.append(np.inf if free else float(lim.get("upper", "inf")))
        vel.append(np.inf if lim is None else float(lim.get("velocity", "inf")))
    return {"position_min": lo, "position_max": hi, "max_velocity": vel}


@dataclass
class Bounds:
    """Limits as plain numbers, per joint; inf where a limit is not given."""

    lower: np.ndarray
    upper: np.ndarray
    max_delta: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    dt: float
    box_lower: np.ndarray | None = None
    box_upper: np.ndarray | None = None
    fk: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_params(cls, p: Mapping, n: int, dt: float, fk: Callable[[np.ndarray], np.ndarray] | None = None) -> Bounds:
        """From the ``limits.*`` parameter names (position_min, max_delta, workspace_min, ...)."""
        box = p.get("workspace_min")
        return cls(_per_joint(p.get("position_min"), n, -np.inf), _per_joint(p.get("position_max"), n, np.inf),
                   _per_joint(p.get("max_delta"), n, np.inf), _per_joint(p.get("max_velocity"), n, np.inf),
                   _per_joint(p.get("max_acceleration"), n, np.inf), float(dt),
                   None if box is None else np.asarray(box, float),
                   None if box is None else np.asarray(p["workspace_max"], float), fk)

    @property
    def step(self) -> np.ndarray:
        """The largest change of one joint between two commands: max_delta and max_velocity * dt."""
        return np.minimum(self.max_delta, self.max_velocity * self.dt)


def violations(q: np.ndarray, prev: np.ndarray, prev_step: np.ndarray, b: Bounds, tol: float = 1e-9) -> list[str]:
    """What command `q` (after `prev`, which moved by `prev_step`) breaks; empty when it is safe."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != prev.shape:
        return [f"wrong size {q.shape}"]
    if not np.all(np.isfinite(q)):
        return ["non-finite"]
    out = []
    if np.any(q < b.lower - tol) or np.any(q > b.upper + tol):
        out.append(f"position outside [{b.lower.tolist()}, {b.upper.tolist()}]: {q.tolist()}")
    step = q - prev
    if np.any(np.abs(step) > b.max_delta + tol):
        out.append(f"|dq| {np.abs(step).tolist()} > max_delta")
    if np.any(np.abs(step) / b.dt > b.max_velocity + tol / b.dt):
        out.append(f"velocity {(np.abs(step) / b.dt).tolist()} > max_velocity")
    if np.any(np.abs(step - prev_step) / b.dt**2 > b.max_acceleration + tol / b.dt**2):
        out.append(f"acceleration {(np.abs(step - prev_step) / b.dt ** 2).tolist()} > max_acceleration")
    if b.fk is not None and b.box_lower is not None:
        tip = np.asarray(b.fk(q), dtype=np.float64)
        if np.any(tip < b.box_lower - 1e-6) or np.any(tip > b.box_upper + 1e-6):
            out.append(f"tip {tip.tolist()} outside the workspace box")
    return out


def check_stream(commands: Sequence[np.ndarray], start: np.ndarray, b: Bounds) -> list[str]:
    """Every command of a stream published from rest at `start`, each against the one before."""
    prev, prev_step = np.asarray(start, dtype=np.float64), np.zeros(len(start))
    bad = []
    for k, q in enumerate(commands):
        bad += [f"command {k}: {v}" for v in violations(q, prev, prev_step, b)]
        if np.shape(q) == prev.shape:
            prev, prev_step = np.asarray(q, dtype=np.float64), np.asarray(q, dtype=np.float64) - prev
    return bad


@dataclass
class CheckReport:
    """Result of :func:`check_commands` over one trial's command log."""

    commands: int = 0  # published commands (JointTrajectory / Float64MultiArray messages)
    points: int = 0  # positions checked (every trajectory point)
    unsafe: int = 0  # commands with at least one violation
    violations: list[str] = field(default_factory=list)
    holds: list[bool] = field(default_factory=list)  # per command: a hold (incl. safety holds)
    log: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # the node's counters at the end of the trial

    def ticks_to_hold(self, mark: int) -> int | None:
        """Commands after `mark` until the first hold (0: the command at `mark` already holds)."""
        for i in range(mark, len(self.holds)):
            if self.holds[i]:
                return i - mark
        return None

    def ticks_to_sustained_hold(self, mark: int, end: int) -> int | None:
        """Commands after `mark` until the arm holds for good, i.e. every command up to `end` is a hold."""
        if not 0 <= mark < end <= len(self.holds) or not self.holds[end - 1]:
            return None
        i = end - 1
        while i > mark and self.holds[i - 1]:
            i -= 1
        return i - mark

    def held_from(self, start: int, end: int) -> bool:
        """Every command in [start, end) is a hold."""
        return start < end <= len(self.holds) and all(self.holds[start:end])

    def first_action_after(self, mark: int) -> int | None:
        """Commands after `mark` until the first non-hold one (recovery)."""
        for i in range(mark, len(self.holds)):
            if not self.holds[i]:
                return i - mark
        return None


class ChainCheck:
    """Commands checked one at a time as they are published, each point against the one before: the
    incremental form of :func:`check_commands` (a soak keeps the chain, not the log)."""

    def __init__(self, bounds: Bounds, keep: int = 100) -> None:
        self.bounds = bounds
        self.keep = keep  # violation messages kept (all are counted)
        self.commands = self.points = self.unsafe = 0
        self.violations: list[str] = []
        self._prev: np.ndarray | None = None
        self._prev_step: np.ndarray | None = None

    def restart(self, seed: Sequence[float]) -> None:
        """A new activation: the next command starts from the measured `seed`, at rest."""
        self._prev = np.asarray(seed, dtype=np.float64).copy()
        self._prev_step = np.zeros_like(self._prev)

    def add(self, points: np.ndarray, label: str = "") -> list[str]:
        """Check one command (row 0 now, then its look-ahead, chained); what it breaks (empty when safe)."""
        if self._prev is None or self._prev_step is None:
            raise RuntimeError("ChainCheck.add before restart(seed)")
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        bad: list[str] = []
        p, s = self._prev, self._prev_step
        new_prev, new_step = p, s
        for i, q in enumerate(pts):
            bad += [f"point {i}: {x}" for x in violations(q, p, s, self.bounds)]
            self.points += 1
            if q.shape == p.shape:
                p, s = q, q - p
            if i == 0:
                new_prev, new_step = p, s
        if bad:
            self.unsafe += 1
            if len(self.violations) < self.keep:
                self.violations.append(f"command {self.commands}{label}: {bad}")
        self.commands += 1
        self._prev, self._prev_step = new_prev, new_step
        return bad


def check_commands(log: list[dict[str, Any]], bounds: Bounds, seeds: dict[int, np.ndarray]) -> CheckReport:
    """Check every published point with the oracle: finite, position limits, per-step delta/velocity,
    acceleration, and (when `bounds` has a box and FK) the tip inside the box.

    Commands are chained in publish order; a new activation (``segment``) restarts from its measured seed
    with zero velocity. Within a trajectory, point i is checked against point i-1."""
    rep = CheckReport(log=log)
    chain = ChainCheck(bounds, keep=len(log))
    seg = None
    for entry in log:
        if entry["segment"] != seg:
            seg = entry["segment"]
            chain.restart(seeds[seg])
        chain.add(entry["points"], f" ({entry.get('status')}, {entry.get('reason')})")
        rep.holds.append(bool(entry["hold"]))
    rep.commands, rep.points, rep.unsafe, rep.violations = chain.commands, chain.points, chain.unsafe, chain.violations
    return rep
