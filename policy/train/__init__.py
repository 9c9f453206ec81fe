"""streamdp.policy.train: training of streaming diffusion policies, one package for every way to train.

    config       dataclasses behind the hydra groups (``train``, ``dataset``), validated on construction
    data         the sample interface: windows, LeRobot v3 / zarr datasets, in-memory episodes, sampler
    trainer      the one optimisation loop (`Trainer`: AdamW, warm-up + cosine LR, clipping, EMA, DDP)
    checkpoints  training checkpoints: atomic save, verification, exact resume
    cli          ``streamdp-train`` / ``python -m streamdp.policy.train``: hydra, run directory, logging
"""

from streamdp.policy.train.cli import TrainResult, load_config, main, train

__all__ = ["TrainResult", "load_config", "main", "train"]
