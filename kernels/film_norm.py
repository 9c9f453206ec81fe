"""Fused FiLM-modulated GroupNorm: ``scale * mish(GroupNorm(h)) + shift`` in one pass.

This is the second half of the 1-D U-Net's first conv block plus its FiLM (``FiLMResBlock``:
``block1 = mish(GroupNorm(conv(x)))`` then ``scale * block1 + bias`` with scale/bias predicted per
channel from the condition). Unfused it is four full passes (normalise, affine, Mish, FiLM) with three
intermediate tensors; the kernel keeps one (batch, group) slab in registers and writes once.

Shapes: h (B, C, L); weight, bias (C,) — the GroupNorm affine; scale, shift (B, C) — the FiLM output.
Statistics and arithmetic in float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from streamdp.kernels._dispatch import next_pow2, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

MAX_SLAB = 1 << 15  # elements of one (batch, group) slab the kernel keeps in registers


def film_group_norm_reference(
    h: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, shift: Tensor, groups: int, eps: float = 1e-5
) -> Tensor:
    y = F.mish(F.group_norm(h.float(), groups, weight.float(), bias.float(), eps))
    return (scale.float()[..., None] * y + shift.float()[..., None]).to(h.dtype)


if triton is not None:

    @triton.jit
    def _film_gn_kernel(h_ptr, w_ptr, b_ptr, s_ptr, t_ptr, out_ptr, C, L, G, eps, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        bi = pid // G
        gi = pid % G
        cg = C // G
        n = cg * L
        base = bi * C * L + gi * cg * L
        idx = tl.arange(0, BLOCK)
        m = idx < n
        v = tl.load(h_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(v, axis=0) / n
        d = tl.where(m, v - mean, 0.0)
        var = tl.sum(d * d, axis=0) / n
        rstd = 1.0 / tl.sqrt(var + eps)
        c = gi * cg + idx // L
        w = tl.load(w_ptr + c, mask=m, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=m, other=0.0).to(tl.float32)
        y = d * rstd * w + b
        # Mish: y * tanh(softplus(y)), softplus with torch's threshold 20; tanh of a non-negative argument
        sp = tl.where(y > 20.0, y, tl.log(1.0 + tl.exp(tl.minimum(y, 20.0))))
        e = tl.exp(-2.0 * sp)
        y = y * (1.0 - e) / (1.0 + e)
        s = tl.load(s_ptr + bi * C + c, mask=m, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + bi * C + c, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + base + idx, (s * y + t).to(out_ptr.dtype.element_ty), mask=m)


def film_group_norm_triton(
    h: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, shift: Tensor, groups: int, eps: float = 1e-5
) -> Tensor:
    if triton is None:
        raise RuntimeError("triton is not installed")
    b, c, length = h.shape
    if c % groups:
        raise ValueError(f"channels {c} not divisible by groups {groups}")
    if tuple(scale.shape) != (b, c) or tuple(shift.shape) != (b, c):
        raise ValueError(f"scale/shift must be (B, C) = {(b, c)}, got {tuple(scale.shape)}, {tuple(shift.shape)}")
    slab = (c // groups) * length
    if slab > MAX_SLAB:  # too big for one register-resident slab: use the reference
        return film_group_norm_reference(h, weight, bias, scale, shift, groups, eps)
    h = h.contiguous()
    out = torch.empty_like(h)
    _film_gn_kernel[(b * groups,)](
        h,
        weight.contiguous(),
        bias.contiguous(),
        scale.contiguous(),
        shift.contiguous(),
        out,
        c,
        length,
        groups,
        float(eps),
        BLOCK=next_pow2(slab),
    )
    return out


def film_group_norm(
    h: Tensor, weight: Tensor, bias: Tensor, scale: Tensor, shift: Tensor, groups: int, eps: float = 1e-5,
    force: bool | None = None,
) -> Tensor:
    """scale[..., None] * mish(group_norm(h)) + shift[..., None]; Triton on CUDA (or forced), else reference."""
    if use_triton(h, force=force):
        return film_group_norm_triton(h, weight, bias, scale, shift, groups, eps)
    return film_group_norm_reference(h, weight, bias, scale, shift, groups, eps)
