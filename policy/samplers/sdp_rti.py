"""The SDP/RTI hybrid: SDP's rolling ladder on the truncated grid [k' ... clean], whose fresh tail
starts from the previous solution shifted by Ta instead of pure noise.

Its first observation and its resamples are full solves that reseed the buffer. See
docs/algorithms.md (SDP+RTI) for what it costs in success and why.
"""

from __future__ import annotations

import torch

from streamdp.policy.samplers.base import SamplerContext, executable, left
from streamdp.policy.samplers.rti import WarmStartSampler, guess, snap_discrete
from streamdp.policy.samplers.sdp import SDPSampler


class SDPRTISampler(WarmStartSampler, SDPSampler):
    """sampler='sdp_rti'."""

    kinds = ("full", "sdp")
    state_keys = ("buffer", "stream_open", "solve", "solution", "since_full")

    def __init__(self, ctx: SamplerContext) -> None:
        super().__init__(ctx)
        self.buffer.track_x0 = True  # the whole-horizon clean estimate becomes the next solution

    def reset(self, primer: torch.Tensor | None = None) -> None:
        SDPSampler.reset(self, primer)
        self._forget()

    @property
    def busy(self) -> bool:
        return self.solve is not None or self.stream_open

    def advance(self, cond: torch.Tensor, budget: int | None, executed: int) -> tuple[int, torch.Tensor | None]:
        if self.solve is None and not self.stream_open:
            if self.solution is None or self.periodic_resample_due():
                self.solve = self.full_solve()
        if self.solve is not None:
            return self._finish_full(cond, budget, 0)
        calls, _ = self.denoise_until_ready(cond, budget, fused=False)  # the fused pass keeps no x0_hat
        buf = self.buffer
        if not buf.chunk0_clean():
            return calls, None
        self.stream_open = False
        chunk = buf.ready_actions()
        c = self.ctx.config
        disc, ta, to = c.snapped_dims, c.n_action_steps, c.n_obs_steps
        solution = snap_discrete(buf.x0_hat, disc)
        assert self.solution is not None
        prior = guess(self.solution, ta, disc)
        window = slice(to - 1, to - 1 + ta)
        if self.diverged(solution[window], prior[window], ta):
            self.solve = self.full_solve()
            return self._finish_full(cond, budget, calls)
        buf.roll(generator=self.ctx.generator, fresh=guess(solution, ta, disc)[buf.keep_end - ta :])
        self.solution = solution
        self.since_full += 1
        return calls, snap_discrete(chunk, disc)

    def _finish_full(self, cond: torch.Tensor, budget: int | None, calls: int) -> tuple[int, torch.Tensor | None]:
        """Run the pending full solve; emit its chunk and reseed the buffer from it, shifted by Ta."""
        s = self.solve
        assert s is not None
        calls += s.run(self.ctx, cond, left(budget, calls))
        if not s.done:
            return calls, None
        self.solve = None
        c = self.ctx.config
        solution = snap_discrete(s.x[0], c.snapped_dims)
        self.buffer.reset(guess(solution, c.n_action_steps, c.snapped_dims), generator=self.ctx.generator)
        self.solution = solution.clone()
        self.since_full = 0
        return calls, executable(self.ctx, solution)
