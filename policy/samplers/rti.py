"""RTI: Real-Time Iteration warm starts (Duan, Yin, Kragic, IROS 2025, arXiv 2508.05396).

Keep the last clean trajectory A (normalised, whole Tp horizon). The first observation samples fully on
the configured grid. Later observations guess G = A shifted left by the actions executed since A was
made (the tail repeating the last row), forward-noise G to a start level k' and solve the short grid
[k' ... clean] (:func:`~streamdp.policy.samplers.settings.rti_grid`). Discrete action dims (a gripper)
are snapped to their normalised extremes before noising and in the output. A full resample runs every
``rti_full_every`` observations and whenever the solution's mean absolute difference from its guess
exceeds ``rti_divergence`` (recovery from a wrong mode). See docs/algorithms.md (RTI).
"""

from __future__ import annotations

import torch

from streamdp.policy.samplers.base import ChunkSolve, Sampler, SamplerContext, executable, left
from streamdp.policy.samplers.rolling_buffer import shift_trajectory
from streamdp.policy.schedule import NoiseSchedule


def snap_discrete(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Discrete dims to their normalised extremes -1/+1 (sign, 0 -> +1)."""
    if not dims:
        return x
    x = x.clone()
    x[..., dims] = torch.where(x[..., dims] >= 0, 1.0, -1.0).to(x.dtype)
    return x


def warm_start(schedule: NoiseSchedule, g: torch.Tensor, noise: torch.Tensor, start_level: int) -> torch.Tensor:
    """The guess (B, T, D) forward-noised to k'. At k' = N-1 this is the noise itself: the samplers label
    pure Gaussian with the top level (sampler_grid), where the guess would keep a weight of only
    sqrt(alpha_bar[N-1]) (~5e-4, cosine), which the x0-prediction then divides by; so k' = N-1 is
    exactly full sampling with the same draws."""
    if start_level >= schedule.num_train_steps - 1:
        return noise.clone()
    k = torch.full(g.shape[:-1], start_level, device=g.device)
    return schedule.add_noise(g, noise, k)


def guess(solution: torch.Tensor, shift: int, discrete: list[int]) -> torch.Tensor:
    """Warm-start guess: the solution moved left by `shift` executed actions, held at its last row."""
    return snap_discrete(shift_trajectory(solution, shift), discrete)


def divergence(solution: torch.Tensor, guess_: torch.Tensor, valid_rows: int, discrete: list[int]) -> float:
    """Mean |solution - guess| over the rows the guess really knew (not the held tail), continuous dims."""
    d = solution.shape[-1]
    cont = [i for i in range(d) if i not in set(discrete)] or list(range(d))
    rows = max(1, min(valid_rows, solution.shape[0]))
    return float((solution[:rows, cont] - guess_[:rows, cont]).abs().mean())


def new_rti_stats() -> dict[str, float]:
    return {"full": 0, "warm": 0, "periodic_resamples": 0, "divergence_resamples": 0, "last_divergence": 0.0}


class WarmStartSampler(Sampler):
    """What RTI and the SDP/RTI hybrid share: the kept solution, full solves, resample rules, stats."""

    def __init__(self, ctx: SamplerContext) -> None:
        super().__init__(ctx)
        self.stats = new_rti_stats()  # cumulative across resets: full / warm solves, resamples
        self.solve: ChunkSolve | None = None
        self.solution: torch.Tensor | None = None  # last clean trajectory A (Tp, D), normalised
        self.since_full = 0  # solves since the last full one

    def _forget(self) -> None:
        self.solve, self.solution, self.since_full = None, None, 0

    @property
    def busy(self) -> bool:
        return self.solve is not None

    def abandon(self) -> None:
        self.solve = None

    def full_solve(self) -> ChunkSolve:
        c = self.ctx.config
        x = self.ctx.noise(1, c.horizon, c.action_dim)
        self.stats["full"] += 1
        self.begin_solve("full")
        return ChunkSolve(x, self.ctx.settings.full_grid(), "full")

    def periodic_resample_due(self) -> bool:
        every = self.ctx.config.rti_full_every
        if every > 0 and self.since_full + 1 >= every:
            self.stats["periodic_resamples"] += 1
            return True
        return False

    def diverged(self, solution: torch.Tensor, g: torch.Tensor, valid: int) -> bool:
        c = self.ctx.config
        d = divergence(solution, g, valid, c.discrete_action_dims)
        self.stats["last_divergence"] = d
        if c.rti_divergence > 0 and d > c.rti_divergence:
            self.stats["divergence_resamples"] += 1
            return True
        return False


class RTISampler(WarmStartSampler):
    """sampler='rti': one resumable chunk solve per observation, warm-started from the shifted solution."""

    kinds = ("full", "warm")
    state_keys = ("solve", "solution", "since_full")

    def reset(self, primer: torch.Tensor | None = None) -> None:
        self._forget()

    def _new_solve(self, executed: int) -> ChunkSolve:
        """Full on the first observation and on periodic resamples, else warm from the shifted solution."""
        c, ctx = self.ctx.config, self.ctx
        if self.solution is None or self.periodic_resample_due():
            return self.full_solve()
        valid = c.horizon - executed
        if valid <= 0:  # everything planned has been executed: nothing left to warm-start from
            return self.full_solve()
        g = guess(self.solution, executed, c.snapped_dims)
        k0 = ctx.settings.rti_start_level
        x = warm_start(ctx.schedule, g[None], ctx.noise(1, c.horizon, c.action_dim), k0)
        self.stats["warm"] += 1
        self.begin_solve("warm")
        return ChunkSolve(x, ctx.settings.warm_grid(), "warm", guess=g, valid=valid)

    def advance(self, cond: torch.Tensor, budget: int | None, executed: int) -> tuple[int, torch.Tensor | None]:
        if self.solve is None:
            self.solve = self._new_solve(executed)
        calls = 0
        while True:
            s = self.solve
            calls += s.run(self.ctx, cond, left(budget, calls))
            if not s.done:
                return calls, None
            if s.kind == "warm" and self.diverged(s.x[0], s.guess, s.valid):  # type: ignore[arg-type]
                self.solve = self.full_solve()
                continue
            break
        self.solve = None
        x = snap_discrete(s.x[0], self.ctx.config.snapped_dims)
        self.solution = x.clone()
        self.since_full = 0 if s.kind == "full" else self.since_full + 1
        return calls, executable(self.ctx, x)
