"""Full-chunk sampling: DDPM on all N train levels or DDIM on a K-level grid, from pure noise, once
per observation (the diffusion_policy baseline every acceleration is measured against)."""

from __future__ import annotations

import torch

from streamdp.policy.samplers.base import ChunkSolve, Sampler, SamplerContext, executable


class FullChunkSampler(Sampler):
    """sampler='ddpm' | 'ddim': one resumable full solve per observation."""

    kinds = ("full",)
    state_keys = ("solve",)

    def __init__(self, ctx: SamplerContext) -> None:
        super().__init__(ctx)
        self.solve: ChunkSolve | None = None

    def reset(self, primer: torch.Tensor | None = None) -> None:
        self.solve = None

    @property
    def busy(self) -> bool:
        return self.solve is not None

    def abandon(self) -> None:
        self.solve = None

    def advance(self, cond: torch.Tensor, budget: int | None, executed: int) -> tuple[int, torch.Tensor | None]:
        if self.solve is None:
            c = self.ctx.config
            self.begin_solve("full")
            self.solve = ChunkSolve(self.ctx.noise(1, c.horizon, c.action_dim), self.ctx.settings.full_grid(), "full")
        calls = self.solve.run(self.ctx, cond, budget)
        if not self.solve.done:
            return calls, None
        x, self.solve = self.solve.x[0], None
        return calls, executable(self.ctx, x)
