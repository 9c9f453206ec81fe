"""Samplers ("inner loops") behind one protocol (:class:`~streamdp.policy.samplers.base.Sampler`).

==========  ==================================================  =====================================
sampler     module                                              network calls per observation
==========  ==================================================  =====================================
ddpm, ddim  :mod:`~streamdp.policy.samplers.full_chunk`         N (DDPM) or K (DDIM)
sdp         :mod:`~streamdp.policy.samplers.sdp`                about ceil(K / h)
rti         :mod:`~streamdp.policy.samplers.rti`                rti_steps (full K on resamples)
sdp_rti     :mod:`~streamdp.policy.samplers.sdp_rti`            about ceil(K' / h) on [k' ... clean]
==========  ==================================================  =====================================

Every sampler calls the network through :class:`~streamdp.policy.samplers.denoiser_call.DenoiserCall`.
"""

from __future__ import annotations

from streamdp.policy.samplers.base import ChunkSolve, Sampler, SamplerContext
from streamdp.policy.samplers.denoiser_call import DenoiserCall
from streamdp.policy.samplers.full_chunk import FullChunkSampler
from streamdp.policy.samplers.rti import RTISampler
from streamdp.policy.samplers.sdp import SDPSampler
from streamdp.policy.samplers.sdp_rti import SDPRTISampler
from streamdp.policy.samplers.settings import SolveSettings, rti_grid

SAMPLER_CLASSES: dict[str, type[Sampler]] = {
    "ddpm": FullChunkSampler,
    "ddim": FullChunkSampler,
    "sdp": SDPSampler,
    "rti": RTISampler,
    "sdp_rti": SDPRTISampler,
}


def make_sampler(ctx: SamplerContext) -> Sampler:
    """The sampler the config names. Construction draws no random numbers; call reset() before use."""
    return SAMPLER_CLASSES[ctx.config.sampler](ctx)


__all__ = [
    "SAMPLER_CLASSES",
    "ChunkSolve",
    "DenoiserCall",
    "FullChunkSampler",
    "RTISampler",
    "SDPRTISampler",
    "SDPSampler",
    "Sampler",
    "SamplerContext",
    "SolveSettings",
    "make_sampler",
    "rti_grid",
]
