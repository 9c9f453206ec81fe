"""The one wrapper every sampler calls the denoiser through.

It owns what must be the same for every inner loop: counting network calls (NFE), `torch.compile`,
CUDA-graph replay and the block cache's hooks (BAC, or the calibration recorder). Counting lives here,
not in a wrapper around the network, because a CUDA-graph replay runs no Python of the network and a
compiled call traces through wrappers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from streamdp.policy.config import ConfigError, PolicyConfig

if TYPE_CHECKING:  # the model imports the samplers' training labels: no runtime import cycle
    from streamdp.policy.model import DiffusionModel


class DenoiserCall:
    """``call(x, k, cond) -> eps`` for one policy; `cache_factory` builds the BAC runtime on first use."""

    def __init__(
        self,
        model: DiffusionModel,
        config: PolicyConfig,
        device: torch.device,
        cache_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.model, self.config, self.device = model, config, device
        self.cache_factory = cache_factory
        self.nfe_total = 0  # every network call made through this wrapper
        self.spent = 0  # calls since the last emitted chunk (Policy.last_nfe when a chunk is emitted)
        self.cache: Any = None  # attached block cache (BAC runtime or calibration recorder)
        self._graph: Any = None
        self._compiled: Any = None

    # ------------------------------------------------------------------ block cache
    def attach_cache(self, cache: Any) -> None:
        """Route every transformer residual branch through `cache.hook` (a BAC BlockCache or a recorder)."""
        branches = getattr(self.model.denoiser, "branches", None)
        if branches is None:
            raise ConfigError("block caching needs the transformer denoiser (it has residual branches)")
        self.detach_cache()
        bs = branches()
        cache.bind(bs)
        for b in bs:
            b.cache_hook = cache.hook
        self.cache = cache
        self._graph = None  # captured graphs baked in the old hooks

    def detach_cache(self) -> None:
        if self.cache is None:
            return
        for b in self.model.denoiser.branches():
            b.cache_hook = None
        self.cache = None
        self._graph = None

    @property
    def caching(self) -> bool:
        """A block cache is attached, or will be at the next solve (cache='bac')."""
        return self.cache is not None or self.config.cache == "bac"

    def begin_solve(self, key: str) -> None:
        """A solve of kind `key` starts: its block-caching schedule (and step count) starts over."""
        if self.config.cache == "bac" and self.cache is None:
            if self.cache_factory is None:
                raise ConfigError("cache='bac' needs BAC schedules, but this policy has no source for them")
            self.attach_cache(self.cache_factory())
        if self.cache is not None:
            self.cache.begin_solve(key)

    # ------------------------------------------------------------------ the call
    def take_spent(self) -> int:
        """Calls since the last emitted chunk; starts the count over."""
        spent, self.spent = self.spent, 0
        return spent

    def __call__(
        self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor, remaining: int | None = None
    ) -> torch.Tensor:
        """One network call; `remaining` = calls left in this solve, this one included (the block cache
        indexes its schedule by it and recomputes every branch on the last call)."""
        self.nfe_total += 1
        self.spent += 1
        if self.cache is not None:
            self.cache.begin_step(remaining)
        with torch.inference_mode():
            if self._use_graph():
                eps = self._graph_call(x, k, cond)
            elif self.config.compile and self.cache is None:
                if self._compiled is None:
                    self._compiled = torch.compile(self.model.eps, dynamic=False)
                eps = self._compiled(x, k, cond)
            else:
                eps = self.model.eps(x, k, cond)
        if self.cache is not None:
            self.cache.end_step()
        return eps

    def _use_graph(self) -> bool:
        return (
            self.config.cuda_graph
            and self.device.type == "cuda"
            and torch.cuda.is_available()
            and (self.cache is None or getattr(self.cache, "graph_safe", False))
        )

    @staticmethod
    def _make_graph(fn: Callable[..., torch.Tensor]) -> Any:
        from streamdp.kernels.cuda_graph import GraphedCall

        return GraphedCall(fn)

    def _graph_call(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Replay the denoiser call from a CUDA graph (one per BAC recompute pattern)."""
        if self._graph is None:
            self._graph = self._make_graph(self.model.eps)
        cache = self.cache
        variant = cache.pattern() if cache is not None else None
        if cache is not None:
            cache.counting = False  # hooks run only while capturing; replays are accounted below
        try:
            eps = self._graph(x, k, cond, variant=variant)
        finally:
            if cache is not None:
                cache.counting = True
        if cache is not None:
            cache.account(variant)
        return eps
