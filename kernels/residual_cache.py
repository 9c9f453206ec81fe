"""BAC residual add: ``x + cached_delta`` (reuse step) or ``x + delta`` while storing ``delta`` into the
cache (update step), in one pass over memory.

On an update step the unfused form reads delta twice (add, then copy into the cache buffer); the
kernel reads x and delta once and writes both outputs. The cache buffer keeps a fixed address, which
CUDA-graph replay needs.
"""

from __future__ import annotations

import torch

from streamdp.kernels._dispatch import use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

BLOCK = 1024


def cached_residual_reference(x: torch.Tensor, delta: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
    """out = x + delta; with `cache`, also cache[...] = delta."""
    if cache is not None:
        cache.copy_(delta)
    return x + delta


if triton is not None:

    @triton.jit
    def _cached_residual_kernel(x_ptr, d_ptr, out_ptr, cache_ptr, n, STORE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        xv = tl.load(x_ptr + offs, mask=m, other=0.0)
        dv = tl.load(d_ptr + offs, mask=m, other=0.0)
        out = xv.to(tl.float32) + dv.to(tl.float32)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=m)
        if STORE:
            tl.store(cache_ptr + offs, dv.to(cache_ptr.dtype.element_ty), mask=m)


def cached_residual_triton(x: torch.Tensor, delta: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
    if triton is None:
        raise RuntimeError("triton is not installed")
    if x.shape != delta.shape or (cache is not None and cache.shape != delta.shape):
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, delta {tuple(delta.shape)}")
    if cache is not None and not cache.is_contiguous():
        raise ValueError("the cache buffer must be contiguous (it is written in place)")
    x, delta = x.contiguous(), delta.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _cached_residual_kernel[(triton.cdiv(n, BLOCK),)](
        x, delta, out, cache if cache is not None else out, n, STORE=cache is not None, BLOCK=BLOCK
    )
    return out


def cached_residual(
    x: torch.Tensor, delta: torch.Tensor, cache: torch.Tensor | None = None, force: bool | None = None
) -> torch.Tensor:
    """x + delta, storing delta into `cache` when given. Triton on CUDA (or when forced), else reference."""
    if use_triton(x, force=force):
        return cached_residual_triton(x, delta, cache)
    return cached_residual_reference(x, delta, cache)
