"""Denoisers: a 1-D conditional U-Net (FiLM) and a transformer with per-token noise levels.

Both take per-slot noise labels k of shape (B, Tp) in train-timestep units (-1 = clean), so one network
serves full-chunk samplers (all labels equal) and the streaming buffer (a ladder of labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from streamdp.policy.config import TransformerConfig, UnetConfig


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        args = t.float()[..., None] * freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


def level_input(k: torch.Tensor) -> torch.Tensor:
    """Shift labels so clean (-1) is 0 and noise level i is i+1."""
    return k.float() + 1.0


# ----------------------------------------------------------------------------------------------
# 1-D conditional U-Net (after Chi et al., Diffusion Policy), FiLM-conditioned
# ----------------------------------------------------------------------------------------------
class Conv1dBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))


class FiLMResBlock(nn.Module):
    """Conv block, then per-channel scale and bias predicted from the condition, then conv block."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(cin, cout, kernel, groups)
        self.block2 = Conv1dBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond)[..., None].chunk(2, dim=1)
        if x.is_cuda:
            # GroupNorm + Mish + FiLM of block1 in one fused pass (streamdp.kernels.film_norm); the CPU
            # path below is its reference, op for op. Imported here: importing Triton is not free.
            from streamdp.kernels.film_norm import film_group_norm

            n = self.block1.norm
            h = self.block1.conv(x)
            h = film_group_norm(h, n.weight, n.bias, scale[..., 0], bias[..., 0], n.num_groups, n.eps)
        else:
            h = scale * self.block1(x) + bias
        return self.block2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Input (B, Tp, Da); global condition = [per-slot level embedding (flattened over Tp) || obs]."""

    def __init__(self, action_dim: int, obs_cond_dim: int, horizon: int, cfg: UnetConfig) -> None:
        super().__init__()
        e = cfg.step_embed_dim
        self.level_embed = SinusoidalEmbedding(e)
        # Each slot's level embedding is kept apart (flattened), so the ladder shape is visible to FiLM.
        self.level_proj = nn.Sequential(
            nn.Linear(horizon * e, cfg.cond_dim * 2), nn.Mish(), nn.Linear(cfg.cond_dim * 2, cfg.cond_dim)
        )
        cond_dim = cfg.cond_dim + obs_cond_dim
        dims = [action_dim, *cfg.down_dims]
        k, g = cfg.kernel_size, cfg.n_groups
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(cin, cout, cond_dim, k, g),
                        FiLMResBlock(cout, cout, cond_dim, k, g),
                        nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = cfg.down_dims[-1]
        self.mid = nn.ModuleList([FiLMResBlock(mid, mid, cond_dim, k, g), FiLMResBlock(mid, mid, cond_dim, k, g)])
        self.up = nn.ModuleList()
        rev = list(reversed(cfg.down_dims))
        for cout, cin in zip(rev[1:], rev[:-1]):
            self.up.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(cin * 2, cout, cond_dim, k, g),
                        FiLMResBlock(cout, cout, cond_dim, k, g),
                        nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
                    ]
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(cfg.down_dims[0], cfg.down_dims[0], k, g), nn.Conv1d(cfg.down_dims[0], action_dim, 1)
        )

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        lev = self.level_proj(self.level_embed(level_input(k)).reshape(b, -1))
        c = torch.cat([lev, cond.reshape(b, -1)], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for r1, r2, down in self.down:
            h = r2(r1(h, c), c)
            skips.append(h)
            h = down(h)
        for r in self.mid:
            h = r(h, c)
        for r1, r2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(r2(r1(h, c), c))
        return self.final(h).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Transformer denoiser: action tokens + per-token level embedding, observations as memory
# ----------------------------------------------------------------------------------------------
class Branch(nn.Module):
    """One residual branch (pre-norm + op). Returns only the delta, so a cache can replace it.

    kind is 'self_attn', 'cross_attn' or 'ffn'; block caching addresses branches by (layer, kind).
    `cache_hook` (None unless a block cache is attached, see policy/bac.py) takes over the residual add.
    """

    cache_hook = None  # callable (branch, x, memory, mask) -> x + delta, with delta computed or cached

    def __init__(self, kind: str, layer: int, d: int, n_heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.kind, self.layer = kind, layer
        self.norm = nn.LayerNorm(d)
        if kind == "ffn":
            self.op = nn.Sequential(
                nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d, d)
            )
        else:
            self.op = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.norm(x)
        if self.kind == "ffn":
            return self.op(h)
        kv = h if self.kind == "self_attn" else memory
        return self.op(h, kv, kv, attn_mask=mask if self.kind == "self_attn" else None, need_weights=False)[0]

    def residual(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x + this branch's delta; an attached cache may reuse a stored delta instead of computing it."""
        if self.cache_hook is None:
            return x + self(x, memory, mask)
        return self.cache_hook(self, x, memory, mask)


class DecoderBlock(nn.Module):
    def __init__(self, layer: int, cfg: TransformerConfig) -> None:
        super().__init__()
        args = (cfg.d_model, cfg.n_heads, cfg.ffn_mult, cfg.dropout)
        self.self_attn = Branch("self_attn", layer, *args)
        self.cross_attn = Branch("cross_attn", layer, *args)
        self.ffn = Branch("ffn", layer, *args)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn.residual(x, mask=mask)
        x = self.cross_attn.residual(x, memory=memory)
        return self.ffn.residual(x)


class TransformerDenoiser(nn.Module):
    """Input (B, Tp, Da), labels (B, Tp), observation tokens (B, To, F) used as cross-attention memory."""

    def __init__(
        self, action_dim: int, obs_feature_dim: int, n_obs_steps: int, horizon: int, cfg: TransformerConfig
    ) -> None:
        super().__init__()
        d = cfg.d_model
        self.in_proj = nn.Linear(action_dim, d)
        self.pos = nn.Parameter(torch.randn(1, horizon, d) * 0.02)
        self.level_embed = nn.Sequential(SinusoidalEmbedding(d), nn.Linear(d, d), nn.Mish(), nn.Linear(d, d))
        self.mem_proj = nn.Linear(obs_feature_dim, d)
        self.mem_pos = nn.Parameter(torch.randn(1, n_obs_steps, d) * 0.02)
        self.blocks = nn.ModuleList([DecoderBlock(i, cfg) for i in range(cfg.n_layers)])
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, action_dim)
        mask = torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1) if cfg.causal else None
        self.register_buffer("mask", mask, persistent=False)

    def branches(self) -> list[Branch]:
        return [b for blk in self.blocks for b in (blk.self_attn, blk.cross_attn, blk.ffn)]

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(x) + self.pos + self.level_embed(level_input(k))
        mem = self.mem_proj(cond) + self.mem_pos
        for blk in self.blocks:
            h = blk(h, mem, self.mask)
        return self.head(self.out_norm(h))
