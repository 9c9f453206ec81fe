"""CUDA-graph capture and replay of one denoiser call (the per-observation inner step).

A streaming step at batch 1 is launch-bound on a GPU: a small transformer issues hundreds of kernels
per call. :class:`GraphedCall` captures ``fn(x, k, cond)`` once per *variant* with static input and
output buffers and then replays it; inputs are copied into the static buffers, the output is cloned.

Variants: with BAC block caching the set of branches recomputed differs from step to step, so each
distinct recompute pattern (a tuple of booleans, one per branch) gets its own graph; all graphs share
one memory pool and the cache's persistent delta buffers, which the cached-residual kernel writes in
place. Without caching there is one variant (None).

Only used when ``torch.cuda.is_available()`` and the tensors are on CUDA; a shape change (another
batch size or horizon) drops every captured graph and captures again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class GraphedCall:
    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.static: tuple[torch.Tensor, ...] | None = None
        self.pool = None
        self.captures = 0
        self.replays = 0

    def _signature(self, *args: torch.Tensor) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device) for a in args)

    def _prepare(self, args: tuple[torch.Tensor, ...]) -> None:
        if self.static is None or self._signature(*self.static) != self._signature(*args):
            self.graphs.clear()
            self.pool = None
            self.static = tuple(a.detach().clone() for a in args)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        assert self.static is not None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # also compiles Triton kernels and allocates cache buffers
                self.fn(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(*self.static)
        self.pool = graph.pool()
        self.captures += 1
        return graph, out

    def __call__(self, *args: torch.Tensor, variant: Hashable = None) -> torch.Tensor:
        self._prepare(args)
        assert self.static is not None
        for s, a in zip(self.static, args):
            s.copy_(a)
        entry = self.graphs.get(variant)
        if entry is None:
            entry = self.graphs[variant] = self._capture()
        entry[0].replay()
        self.replays += 1
        return entry[1].clone()
