"""Trajectory building (no rclpy): JointTrajectory points from queued targets, and sampling one in time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamdp.ros_nodes.observation import stamp_seconds


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


def sampler_from_msg(
    msg: Any, joint_names: Sequence[str], now: float, start: np.ndarray | None = None
) -> TrajectorySampler:
    """The :class:`TrajectorySampler` of a received ``trajectory_msgs/JointTrajectory`` (rclpy or bag-reader
    object), joints matched by name; a zero header stamp starts it at `now` (joint_trajectory_controller
    semantics) from `start`, the position held then (None: the first point's). Raises ValueError saying
    what is wrong."""
    names = list(msg.joint_names)
    missing = [n for n in joint_names if n not in names]
    if missing:
        raise ValueError(f"trajectory joints {names} lack {missing}")
    if len(msg.points) == 0:
        raise ValueError("trajectory has no points")
    idx = [names.index(n) for n in joint_names]
    rows = []
    for k, pt in enumerate(msg.points):
        if len(pt.positions) != len(names):
            raise ValueError(f"trajectory point {k} has {len(pt.positions)} positions for {len(names)} joints")
        rows.append([pt.positions[i] for i in idx])
    pos = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        raise ValueError("trajectory holds non-finite positions")
    t0 = stamp_seconds(msg.header.stamp) or now
    times = [t0 + stamp_seconds(pt.time_from_start) for pt in msg.points]
    return TrajectorySampler(t0, pos[0] if start is None else start, times, pos)
