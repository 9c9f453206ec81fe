"""Choosing between a Triton kernel and its PyTorch reference."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

FORCE_ENV = "STREAMDP_TRITON"  # "1": always Triton, "0": always the reference, unset/"auto": by device


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(*tensors: torch.Tensor, force: bool | None = None) -> bool:
    """True when the Triton kernel should run for these tensors.

    force=None reads STREAMDP_TRITON; without a setting Triton runs exactly when every tensor is on CUDA.
    Forcing Triton on CPU tensors works only under the interpreter (TRITON_INTERPRET=1).
    """
    if force is None:
        env = os.environ.get(FORCE_ENV, "auto").strip().lower()
        force = {"1": True, "true": True, "0": False, "false": False}.get(env)
    on_cuda = all(t.is_cuda for t in tensors)
    if force is None:
        return on_cuda and triton_available()
    if force and not triton_available():
        raise RuntimeError(f"Triton was forced ({FORCE_ENV}=1 or force=True) but is not installed")
    if force and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "Triton on CPU tensors needs TRITON_INTERPRET=1 set before the first `import triton` in the process"
        )
    return bool(force)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
