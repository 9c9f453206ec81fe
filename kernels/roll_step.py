"""Fused SDP buffer update: last per-slot posterior step + emission + roll, in one pass.

The rolling buffer's last network call of an observation is followed by three passes over the buffer
(step every noisy slot one grid position down, copy out the Ta clean actions, shift by Ta with a fresh
tail and re-noised past slots). Here one kernel does all three: every destination row reads its source
row once. Semantics are those of ``RollingBuffer.step`` + ``ready_actions`` + ``roll`` (docs/algorithms.md, SDP);
the schedule maths arrives as per-slot coefficients (``NoiseSchedule.step_coefficients``)::

    stepped[i] = c0[i] * clip((x[i] - s1[i] * eps[i]) * s2[i]) + ck[i] * x[i] + sigma[i] * z_step[i]
    ready[e]   = stepped[emit_start + e]                                   e < n_emit
    out[j]     = stepped[j + shift]                                        j < keep_len
    out[j]     = pa * out[j] + pb * z_past[j]                              j < n_past (re-noise)
    out[j]     = fa * g[j - keep_len] + fb * z_fresh[j - keep_len]         j >= keep_len (fresh tail)

Noise arrives pre-drawn (from the policy's CPU generator), so the fused path makes the same draws in
the same order as the unfused one. Arithmetic is float32 whatever the storage dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from streamdp.kernels._dispatch import next_pow2, use_triton


@dataclass(frozen=True)
class RollPlan:
    """The shape of one roll: which rows move where, and the scalar coefficients (see the module doc)."""

    shift: int  # Ta: rows dropped from the front
    keep_len: int  # rows kept after the shift
    n_past: int  # To-1 kept rows re-noised to the level of slot To-1
    emit_start: int  # first emitted row (To-1)
    n_emit: int  # rows emitted (Ta)
    past_coef: tuple[float, float]  # (pa, pb) of the past re-noise
    fresh_coef: tuple[float, float]  # (fa, fb) of the fresh tail
    clip: float | None  # x0 clip range (None: no clipping)


class RollNoise(NamedTuple):
    """Pre-drawn noise and the fresh tail's guess: z_step (T, D), z_fresh and g (n_fresh, D), z_past (n_past, D)."""

    z_step: torch.Tensor
    z_fresh: torch.Tensor
    z_past: torch.Tensor
    g: torch.Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with the CUDA torch build
    triton = None


def roll_step_reference(
    x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, noise: RollNoise, plan: RollPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference (and CPU path): returns (rolled buffer (T, D), ready actions (n_emit, D))."""
    p = plan
    xf, ef = x.float(), eps.float()
    s1, s2, c0, ck, sig = (c.float()[:, None] for c in coef)
    x0 = (xf - s1 * ef) * s2
    if p.clip is not None:
        x0 = x0.clamp(-p.clip, p.clip)
    stepped = c0 * x0 + ck * xf + sig * noise.z_step.float()
    kept = stepped[p.shift : p.shift + p.keep_len].clone()
    if p.n_past:
        kept[: p.n_past] = p.past_coef[0] * kept[: p.n_past] + p.past_coef[1] * noise.z_past.float()
    fresh = p.fresh_coef[0] * noise.g.float() + p.fresh_coef[1] * noise.z_fresh.float()
    out = torch.cat([kept, fresh], dim=0).to(x.dtype)
    return out, stepped[p.emit_start : p.emit_start + p.n_emit].to(x.dtype)


if triton is not None:

    @triton.jit
    def _stepped_row(x_ptr, eps_ptr, coef_ptr, zs_ptr, src, T, D, cols, m, clip_val, HAS_CLIP: tl.constexpr):
        xv = tl.load(x_ptr + src * D + cols, mask=m, other=0.0).to(tl.float32)
        ev = tl.load(eps_ptr + src * D + cols, mask=m, other=0.0).to(tl.float32)
        zv = tl.load(zs_ptr + src * D + cols, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(coef_ptr + src)
        s2 = tl.load(coef_ptr + T + src)
        c0 = tl.load(coef_ptr + 2 * T + src)
        ck = tl.load(coef_ptr + 3 * T + src)
        sig = tl.load(coef_ptr + 4 * T + src)
        x0 = (xv - s1 * ev) * s2
        if HAS_CLIP:
            x0 = tl.minimum(tl.maximum(x0, -clip_val), clip_val)
        return c0 * x0 + ck * xv + sig * zv

    @triton.jit
    def _roll_step_kernel(
        x_ptr,
        eps_ptr,
        coef_ptr,
        zs_ptr,
        zf_ptr,
        zp_ptr,
        g_ptr,
        out_ptr,
        ready_ptr,
        T,
        D,
        shift,
        keep_len,
        n_past,
        emit_start,
        pa,
        pb,
        fa,
        fb,
        clip_val,
        HAS_CLIP: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        r = tl.program_id(0)  # rows 0..T-1: rolled buffer; rows T..T+n_emit-1: emitted actions
        cols = tl.arange(0, BLOCK_D)
        m = cols < D
        if r >= T:
            e = r - T
            y = _stepped_row(x_ptr, eps_ptr, coef_ptr, zs_ptr, emit_start + e, T, D, cols, m, clip_val, HAS_CLIP)
            tl.store(ready_ptr + e * D + cols, y.to(ready_ptr.dtype.element_ty), mask=m)
        else:
            if r < keep_len:
                y = _stepped_row(x_ptr, eps_ptr, coef_ptr, zs_ptr, r + shift, T, D, cols, m, clip_val, HAS_CLIP)
                if r < n_past:
                    zp = tl.load(zp_ptr + r * D + cols, mask=m, other=0.0).to(tl.float32)
                    y = pa * y + pb * zp
                tl.store(out_ptr + r * D + cols, y.to(out_ptr.dtype.element_ty), mask=m)
            else:
                f = r - keep_len
                gv = tl.load(g_ptr + f * D + cols, mask=m, other=0.0).to(tl.float32)
                zf = tl.load(zf_ptr + f * D + cols, mask=m, other=0.0).to(tl.float32)
                tl.store(out_ptr + r * D + cols, (fa * gv + fb * zf).to(out_ptr.dtype.element_ty), mask=m)


def roll_step_triton(
    x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, noise: RollNoise, plan: RollPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: one program per destination row (T buffer rows + n_emit emitted rows)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    t, d = x.shape
    dev = x.device
    p = plan

    def f32(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=dev, dtype=torch.float32).contiguous()

    x, eps = x.contiguous(), eps.to(x.dtype).contiguous()
    coef, z_step, z_fresh, g = f32(coef), f32(noise.z_step), f32(noise.z_fresh), f32(noise.g)
    z_past = f32(noise.z_past) if p.n_past else z_step
    out = torch.empty_like(x)
    ready = torch.empty(p.n_emit, d, device=dev, dtype=x.dtype)
    _roll_step_kernel[(t + p.n_emit,)](
        x,
        eps,
        coef,
        z_step,
        z_fresh,
        z_past,
        g,
        out,
        ready,
        t,
        d,
        p.shift,
        p.keep_len,
        p.n_past,
        p.emit_start,
        float(p.past_coef[0]),
        float(p.past_coef[1]),
        float(p.fresh_coef[0]),
        float(p.fresh_coef[1]),
        float(p.clip) if p.clip is not None else 0.0,
        HAS_CLIP=p.clip is not None,
        BLOCK_D=next_pow2(d),
    )
    return out, ready


def roll_step(
    x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, noise: RollNoise, plan: RollPlan, force: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: Triton on CUDA (or when forced), the reference otherwise."""
    impl = roll_step_triton if use_triton(x, force=force) else roll_step_reference
    return impl(x, eps, coef, noise, plan)
