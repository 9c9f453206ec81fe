"""Training config dataclasses check their own values (hydra nodes and in-memory callers alike)."""

import pytest

from streamdp.policy.config import ConfigError
from streamdp.policy.train.config import DatasetConfig, TrainConfig, ZarrConfig


@pytest.mark.parametrize(
    ("cls", "kw", "match"),
    [
        (TrainConfig, {"steps": 0}, "train.steps must be >= 1"),
        (TrainConfig, {"precision": "fp16"}, "train.precision must be one of"),
        (TrainConfig, {"ema_max_decay": 1.5}, "ema_max_decay in"),
        (TrainConfig, {"num_threads": 0}, "train.num_threads must be >= 1"),
        (DatasetConfig, {"format": "hdf5"}, "dataset.format must be"),
        (ZarrConfig, {"fps": 0.0}, "dataset.zarr.fps must be > 0"),
        (ZarrConfig, {"images": {"a": "img", "b": "img"}}, "two cameras to one array"),
    ],
)
def test_bad_values_fail_on_construction(cls, kw, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kw)


def test_in_memory_defaults_and_overrides():
    c = TrainConfig.in_memory(steps=10, lr=3e-4)
    assert (c.steps, c.lr, c.betas, c.warmup_steps) == (10, 3e-4, [0.9, 0.999], 50)
    assert (c.precision, c.device, c.progress) == ("fp32", "cpu", False)
    with pytest.raises(ConfigError):
        TrainConfig.in_memory(steps=0)
