"""streamdp.kernels: fused ops for the streaming runtime, one module per op.

Each op module holds a Triton kernel, its launcher and a plain PyTorch reference (the CPU path and the
test oracle). Dispatch (:func:`use_triton`): Triton for CUDA tensors, the reference otherwise;
``STREAMDP_TRITON=1`` (or ``force=True``) forces Triton, which on CPU tensors needs ``TRITON_INTERPRET=1``
set before the first ``import triton`` in the process; ``STREAMDP_TRITON=0`` forces the reference.

- :mod:`~streamdp.kernels.roll_step` — SDP buffer: last per-slot posterior step + emission + roll
  (shift, fresh tail, past re-noise) in one pass.
- :mod:`~streamdp.kernels.film_norm` — FiLM-modulated GroupNorm + Mish (the U-Net's FiLMResBlock).
- :mod:`~streamdp.kernels.residual_cache` — BAC residual add: x + cached delta, or x + delta while
  storing delta into the cache.
- :mod:`~streamdp.kernels.cuda_graph` — CUDA-graph capture/replay of the denoiser call.

Importing this package does not import Triton; the op modules do, on first use.
"""

from streamdp.kernels._dispatch import FORCE_ENV, triton_available, use_triton

__all__ = ["FORCE_ENV", "triton_available", "use_triton"]
