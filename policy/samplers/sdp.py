"""SDP: Streaming Diffusion Policy (Høeg et al., arXiv 2406.04806) on a rolling buffer.

The buffer (:class:`~streamdp.policy.samplers.rolling_buffer.RollingBuffer`) holds Tp action slots on a
noise ladder. Per observation the sampler calls the denoiser until chunk 0 is clean (about ceil(K/h)
calls), emits its Ta actions and rolls the buffer by one chunk. See docs/algorithms.md (SDP).
"""

from __future__ import annotations

import torch

from streamdp.policy.samplers.base import Sampler, SamplerContext
from streamdp.policy.samplers.rolling_buffer import RollingBuffer


class SDPSampler(Sampler):
    """sampler='sdp'."""

    kinds = ("sdp",)
    state_keys = ("buffer", "stream_open")

    def __init__(self, ctx: SamplerContext) -> None:
        super().__init__(ctx)
        c = ctx.config
        self.buffer = RollingBuffer(
            ctx.schedule,
            c.horizon,
            c.n_obs_steps,
            c.n_action_steps,
            c.action_dim,
            c.num_inference_steps,
            ctx.device,
            grid=ctx.settings.stream_grid(),
        )
        self.stream_open = False  # the solve for the current observation has begun

    def reset(self, primer: torch.Tensor | None = None) -> None:
        self.buffer.reset(primer, generator=self.ctx.generator)
        self.stream_open = False

    @property
    def busy(self) -> bool:
        return self.stream_open

    def denoise_until_ready(
        self, cond: torch.Tensor, budget: int | None, fused: bool
    ) -> tuple[int, torch.Tensor | None]:
        """Step the buffer until chunk 0 is clean, at most `budget` calls. With `fused` (CUDA) the last
        call's step, emission and roll run as one kernel and its Ta actions are returned."""
        buf, ctx, mode = self.buffer, self.ctx, self.ctx.settings.step_mode
        if not self.stream_open:
            self.begin_solve("sdp")
            self.stream_open = True
        calls = 0
        while not buf.chunk0_clean() and (budget is None or calls < budget):
            eps = ctx.call(buf.x[None], buf.labels()[None], cond, remaining=buf.steps_until_ready())[0]
            calls += 1
            if fused and buf.steps_until_ready() == 1:  # last call: step + emit + roll in one kernel
                self.stream_open = False
                return calls, buf.step_and_roll(eps, mode=mode, generator=ctx.generator)
            buf.step(eps, mode=mode, generator=ctx.generator)
        return calls, None

    def advance(self, cond: torch.Tensor, budget: int | None, executed: int) -> tuple[int, torch.Tensor | None]:
        calls, chunk = self.denoise_until_ready(cond, budget, fused=self.buffer.x.is_cuda)
        if chunk is not None or not self.buffer.chunk0_clean():
            return calls, chunk
        self.stream_open = False
        chunk = self.buffer.ready_actions()
        self.buffer.roll(generator=self.ctx.generator)
        return calls, chunk
