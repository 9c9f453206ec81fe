"""The command pipeline of ``policy_node`` (no rclpy): what one control tick publishes, and whether it holds.

Order, every tick: the queued action plus its look-ahead (or, for a hold, the last published position)
-> the user's ``command_filter`` seam (skipped for holds) -> the :class:`SafetyFilter` (when limits are
configured; it has the last word) -> a final shape-and-finite check. Anything malformed, non-finite or
raising on the way becomes a hold at the last published position: nothing unchecked reaches the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamdp.ros_nodes.safety import SafetyFilter, SafetyStatus

CommandFilter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def identity_filter(points: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Default command filter: (n, D) commanded positions (row 0 is executed now) -> unchanged."""
    return points


def well_formed(points: np.ndarray, previous: np.ndarray) -> bool:
    """(n >= 1, D) finite positions for the D joints of `previous`: the only shape a command may have."""
    return points.ndim == 2 and points.shape[0] >= 1 and points.shape[1] == previous.shape[0] and \
        bool(np.all(np.isfinite(points)))


@dataclass
class Decision:
    """What to publish: ``points`` (row 0 now, then look-ahead; one row when holding) and why."""

    points: np.ndarray
    hold: bool
    status: str = ""  # the safety filter's status ("" without one)
    nonfinite: int = 0  # malformed or non-finite commands replaced by a hold
    errors: list[str] = field(default_factory=list)  # what went wrong, for the node's log


def safety_stage(safety: SafetyFilter, rows: np.ndarray, hold: bool) -> tuple[np.ndarray, str]:
    """Row 0 through the filter (a hold through ``hold()``, so it decelerates); the look-ahead rows chained
    through a fork of it, so every published point is within limits of the one before, and cut at the first
    that would need clamping. Clamped or held: row 0 only."""
    q0, st = safety.hold() if hold else safety.filter(rows[0])
    if st is not SafetyStatus.OK or rows.shape[0] == 1:
        return q0[None], st.value
    ahead = safety.fork()
    out = [q0]
    for row in rows[1:]:
        q, s2 = ahead.filter(row)
        if s2 is not SafetyStatus.OK:
            break
        out.append(q)
    return np.vstack(out), st.value


def decide(
    position: np.ndarray,
    future: Sequence[np.ndarray],
    hold: bool,
    previous: np.ndarray,
    command_filter: CommandFilter = identity_filter,
    safety: SafetyFilter | None = None,
    max_points: int = 0,
) -> Decision:
    """Run one tick's command through the pipeline (see the module docstring).

    `position` / `future`: the streamer's action for this tick and the queued ones after it (ignored when
    `hold`); `previous`: the last published position; `max_points` > 0 caps the rows (current + look-ahead)."""
    prev = np.asarray(previous, dtype=np.float64)
    rows = [prev] if hold else [position, *future]
    if max_points > 0:
        rows = rows[:max_points]
    d = Decision(prev[None].copy(), hold)
    try:
        pts = np.vstack(rows).astype(np.float64)
        if not hold:  # the user's seam first; the safety filter has the last word
            pts = np.asarray(command_filter(pts, prev.copy()), dtype=np.float64)
            if not well_formed(pts, prev):
                d.nonfinite += 1
                d.errors.append("command filter gave a non-finite or malformed command: holding")
                pts, d.hold = prev[None].copy(), True
        if safety is not None:
            pts, d.status = safety_stage(safety, pts, d.hold)
            d.hold = d.hold or d.status in (SafetyStatus.HOLDING.value, SafetyStatus.FAULT.value)
    except Exception as e:  # noqa: BLE001 - a broken filter must not let a command through
        d.errors.append(f"command filter failed ({e}); holding")
        pts, d.hold = prev[None].copy(), True
    if not well_formed(pts, prev):
        d.nonfinite += 1
        d.errors.append("non-finite or malformed command: holding")
        pts, d.hold = prev[None].copy(), True
    d.points = pts[:1] if d.hold else pts
    return d
