"""streamdp.policy.train: training of streaming diffusion policies, one package for every way to train.

    config       the dataclasses behind the hydra groups (TrainConfig, DatasetConfig, ZarrConfig,
                 ClosedLoopConfig), which validate themselves, and the dataset -> PolicyConfig glue
    data         the sample interface: windows (one implementation), in-memory episodes, image scaling,
                 the resumable distributed sampler and the DataLoader
    sources      datasets on disk: LeRobot v3 and zarr replay buffers, checked against a task card
    trainer      the one training loop (Trainer: AdamW, warm-up + cosine LR, clipping, EMA, bf16, DDP)
                 and train_in_memory (synthetic task, scripted-expert demos)
    checkpoints  training checkpoints: atomic save, verification, exact resume, ``last`` and ``best``
    closed_loop  evaluation in the dataset's simulated task during training, and the best checkpoint
    curve        the training-curve plot (loss and closed-loop success against steps)
    cli          streamdp-train / ``python -m streamdp.policy.train`` / torchrun: hydra, run directory,
                 logging, checkpoint schedule, resume
"""

from streamdp.policy.train.cli import TrainResult, load_config, main, train

__all__ = ["TrainResult", "load_config", "main", "train"]
