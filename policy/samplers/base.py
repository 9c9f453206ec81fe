"""The one protocol every sampler ("inner loop") implements, and the resumable chunk solve they share.

A sampler turns the condition of the newest observation into a clean chunk of Ta normalised actions,
spending network calls through the policy's one :class:`~streamdp.policy.samplers.denoiser_call.DenoiserCall`
(which counts them and applies compile, CUDA graphs and block caching for every sampler alike):

- :meth:`Sampler.reset` forgets everything observation-dependent and re-seeds from a clean primer;
- :meth:`Sampler.advance` spends at most `budget` calls (None: until a chunk is ready) and returns
  ``(calls, chunk or None)``, so a real-time runtime can spread one solve over several control ticks;
- :meth:`Sampler.state_dict` / :meth:`Sampler.load_state_dict` save and restore its own state.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from streamdp.policy.config import PolicyConfig
from streamdp.policy.samplers.denoiser_call import DenoiserCall
from streamdp.policy.samplers.settings import SolveSettings
from streamdp.policy.schedule import CLEAN, NoiseSchedule


@dataclass
class SamplerContext:
    """What every sampler needs from the policy: config, schedule, the network call, the RNG."""

    config: PolicyConfig
    schedule: NoiseSchedule
    call: DenoiserCall
    generator: torch.Generator
    device: torch.device
    settings: SolveSettings

    def noise(self, *shape: int) -> torch.Tensor:
        """Gaussian draws from the policy's generator (on the CPU, so a seed means the same on any device)."""
        return torch.randn(*shape, generator=self.generator).to(self.device)


class ChunkSolve:
    """A resumable solve of a whole chunk (1, Tp, D) down a descending grid of train levels.

    `kind` names the solve for block caching ('full' from pure noise, 'warm' from a noised guess). RTI
    keeps its `guess` and the number of `valid` guess rows (not the held tail) for the divergence test.
    """

    def __init__(
        self, x: torch.Tensor, grid: list[int], kind: str, guess: torch.Tensor | None = None, valid: int = 0
    ) -> None:
        self.x, self.grid, self.i = x, list(grid), 0
        self.kind, self.guess, self.valid = kind, guess, valid

    @property
    def done(self) -> bool:
        return self.i >= len(self.grid)

    def run(self, ctx: SamplerContext, cond: torch.Tensor, budget: int | None) -> int:
        """Step down the grid, at most `budget` calls; returns the calls made."""
        mode, calls = ctx.settings.step_mode, 0
        tp = self.x.shape[1]
        while not self.done and (budget is None or calls < budget):
            k = self.grid[self.i]
            k_prev = self.grid[self.i + 1] if self.i + 1 < len(self.grid) else CLEAN
            kt = torch.full((1, tp), k, device=self.x.device)
            eps = ctx.call(self.x, kt, cond, remaining=len(self.grid) - self.i)
            noise = ctx.noise(*self.x.shape)
            self.x = ctx.schedule.step(self.x, eps, kt, torch.full_like(kt, k_prev), mode=mode, noise=noise)
            self.i += 1
            calls += 1
        return calls


def left(budget: int | None, calls: int) -> int | None:
    """What is left of a call budget (None: unlimited)."""
    return None if budget is None else budget - calls


def executable(ctx: SamplerContext, trajectory: torch.Tensor) -> torch.Tensor:
    """The Ta executable rows of a whole-horizon trajectory (Tp, D): To-1 .. To-1+Ta-1."""
    c = ctx.config
    return trajectory[c.n_obs_steps - 1 : c.n_obs_steps - 1 + c.n_action_steps]


class Sampler(ABC):
    """One inner loop. Subclasses hold all their observation-dependent state as attributes listed in
    `state_keys`, which :meth:`state_dict` copies (tensors cloned) and :meth:`load_state_dict` restores."""

    #: solve kinds this sampler runs: each needs its own block-caching schedule
    kinds: tuple[str, ...] = ()
    state_keys: tuple[str, ...] = ()

    def __init__(self, ctx: SamplerContext) -> None:
        self.ctx = ctx
        self.stats: dict[str, float] = {}

    @abstractmethod
    def reset(self, primer: torch.Tensor | None = None) -> None:
        """Forget solves and solutions; re-seed from `primer` (Tp, D) normalised clean actions, if given."""

    @abstractmethod
    def advance(self, cond: torch.Tensor, budget: int | None, executed: int) -> tuple[int, torch.Tensor | None]:
        """Spend at most `budget` calls on the observation whose condition is `cond`.

        `executed` is the number of actions of the previous chunk popped (executed) since it was made
        (warm starts shift their guess by it). Returns (calls made, clean normalised Ta-chunk or None).
        """

    @property
    def busy(self) -> bool:
        """A solve is under way (it continues even without a new observation)."""
        return False

    def abandon(self) -> None:  # noqa: B027 - most samplers have no partial solve to drop
        """Drop a partly done solve (a caller that wants a chunk for a new observation right now)."""

    def solve_keys(self) -> list[str]:
        return [self.ctx.settings.solve_key(k) for k in self.kinds]

    def begin_solve(self, kind: str) -> None:
        """Tell the call wrapper (and so the block cache) that a solve of `kind` starts."""
        if self.ctx.call.caching:  # the key is only for block caching: no work per observation without it
            self.ctx.call.begin_solve(self.ctx.settings.solve_key(kind))

    def state_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(getattr(self, k)) for k in self.state_keys}
        out["stats"] = dict(self.stats)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.state_keys:
            setattr(self, k, copy.deepcopy(state[k]))
        self.stats = dict(state["stats"])
