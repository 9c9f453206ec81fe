"""Expert teleoperation (no rclpy): which of the sim's expert suggestions become commands, and when.

``sim_bridge_node`` with ``expert`` true publishes, every tick, what the task's scripted expert would
command for that tick's observation (the expert reads the simulator, so it runs there);
``expert_teleop_node`` relays each usable suggestion to the controller topic, as a teleoperation
device or a leader arm would. A suggestion is relayed when it is finite, names as many channels as it
has values, is not older than ``max_age_s`` (a late one would act on a past observation), and is newer
than the last one relayed (DDS may reorder); everything else is counted and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RelayCounters:
    relayed: int = 0
    stale: int = 0
    out_of_order: int = 0
    rejected: int = 0  # malformed or non-finite
    disabled: int = 0  # arrived while the operator let go (enabled=false)


@dataclass
class ExpertRelay:
    """The teleop node's decision per suggestion (see the module docstring)."""

    max_age_s: float = 0.25
    enabled: bool = True
    counters: RelayCounters = field(default_factory=RelayCounters)
    last_stamp: float | None = None

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s}")

    def accept(self, stamp: float, now: float, names: Sequence[str], positions: Sequence[float]) -> np.ndarray | None:
        """The command to relay for a suggestion stamped `stamp` received at `now`, or None (counted)."""
        a = np.asarray(positions, dtype=np.float64).reshape(-1)
        if a.size == 0 or a.size != len(names) or not np.all(np.isfinite(a)):
            self.counters.rejected += 1
            return None
        if not self.enabled:
            self.counters.disabled += 1
            return None
        if self.last_stamp is not None and stamp <= self.last_stamp:
            self.counters.out_of_order += 1
            return None
        if now - stamp > self.max_age_s:
            self.counters.stale += 1
            return None
        self.last_stamp = stamp
        self.counters.relayed += 1
        return a
