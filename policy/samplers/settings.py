"""Grids, step mode and RTI levels of a policy: pure functions of its config and calibration extras.

Every sampler, the block cache's schedule keys and the calibration tools read them from here, so a
grid is computed in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamdp.policy.config import ConfigError, PolicyConfig
from streamdp.policy.schedule import sampler_grid

DEFAULT_RTI_STEPS = 4


def rti_grid(start_level: int, steps: int) -> list[int]:
    """Descending train timesteps of a warm solve from k' = start_level in `steps` calls ("trailing"
    spacing as in sampler_grid: the grid starts at k' and its last level steps to clean).

    rti_grid(N - 1, K) == sampler_grid(N, K). More steps than levels below k' are clamped.
    """
    if start_level < 0:
        raise ValueError(f"start level must be >= 0, got {start_level}")
    steps = max(1, min(int(steps), start_level + 1))
    return sampler_grid(start_level + 1, steps)


@dataclass
class SolveSettings:
    """The solve structure a config (plus its checkpoint's calibration `extras`) implies."""

    config: PolicyConfig
    extras: Mapping[str, Any] = field(default_factory=dict)

    def _rti_calibration(self) -> Mapping[str, Any]:
        cal = self.extras.get("rti", {}) if isinstance(self.extras, Mapping) else {}
        return cal if isinstance(cal, Mapping) else {}

    @property
    def step_mode(self) -> str:
        """Per-step update actually used: 'ddpm' (posterior sample) or 'ddim' (eta = 0)."""
        m = self.config.step_mode
        if m != "auto":
            return m
        return "ddim" if self.config.sampler == "ddim" else "ddpm"

    @property
    def rti_start_level(self) -> int:
        """k' in train timesteps: config.rti_start_level, else the calibrated extras['rti'], else ceil(0.3N)-1."""
        c = self.config
        if c.rti_start_level is not None:
            return int(c.rti_start_level)
        cal = self._rti_calibration()
        if "start_level" in cal:
            return min(int(cal["start_level"]), c.schedule.num_train_steps - 1)
        return c.default_rti_start_level

    @property
    def rti_steps(self) -> int:
        """Calls of a warm solve: config.rti_steps, else the calibrated extras['rti']['steps'], else 4."""
        if self.config.rti_steps is not None:
            return int(self.config.rti_steps)
        return int(self._rti_calibration().get("steps", DEFAULT_RTI_STEPS))

    def full_grid(self) -> list[int]:
        """Grid of a full solve: all N train levels for 'ddpm', else the configured K levels."""
        n = self.config.schedule.num_train_steps
        return sampler_grid(n, n if self.config.sampler == "ddpm" else self.config.num_inference_steps)

    def warm_grid(self) -> list[int]:
        """Grid of an RTI warm solve: [k' ... clean] in min(rti_steps, k'+1) calls."""
        return rti_grid(self.rti_start_level, self.rti_steps)

    def stream_grid(self) -> list[int]:
        """Grid of the SDP ladder: the K-level grid; for 'sdp_rti' the truncated [k' ... clean] with the
        K-level grid's spacing (at least h levels)."""
        c = self.config
        n = c.schedule.num_train_steps
        if c.sampler != "sdp_rti":
            return sampler_grid(n, c.num_inference_steps)
        k0 = self.rti_start_level
        levels = min(k0 + 1, max(c.num_chunks, round(c.num_inference_steps * (k0 + 1) / n)))
        if levels < c.num_chunks:
            raise ConfigError(
                f"sampler 'sdp_rti' needs at least h={c.num_chunks} grid levels below k'={k0}: "
                f"raise rti_start_level to >= {c.num_chunks - 1}"
            )
        return rti_grid(k0, levels)

    def solve_key(self, kind: str) -> str:
        """Name of a solve kind, used to look up its BAC schedule: the step structure it implies."""
        m = self.step_mode
        if kind == "full":
            return f"full-{m}-K{len(self.full_grid())}"
        if kind == "warm":
            return f"warm-{m}-k{self.rti_start_level}-S{len(self.warm_grid())}"
        k = len(self.stream_grid())
        if self.config.sampler == "sdp_rti":
            return f"sdp_rti-{m}-k{self.rti_start_level}-K{k}"
        return f"sdp-{m}-K{k}"
