"""Training config dataclasses check their own values (hydra nodes and in-memory callers alike)."""

import pytest

from streamdp.policy.config import ConfigError
from streamdp.policy.train.config import ClosedLoopConfig, DatasetConfig, TrainConfig, ZarrConfig


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
        (ClosedLoopConfig, {"episodes": 0}, "eval.episodes >= 1"),
        (ClosedLoopConfig, {"max_steps": 0}, "eval.max_steps must be >= 1"),
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


def test_the_evaluation_schedule():
    c = ClosedLoopConfig(every=3)
    assert [s for s in range(1, 11) if c.due(s, 10)] == [3, 6, 9, 10]
    assert not any(ClosedLoopConfig(every=0).due(s, 10) for s in range(1, 11))


def test_a_recipe_sets_task_policy_and_training_and_the_command_line_wins():
    from streamdp.policy.train.cli import load_config

    c = load_config(["recipe=pusht", "dataset.root=/data/pusht"])
    assert (c.task.name, c.policy.denoiser, c.policy.transformer.d_model, c.policy.transformer.n_layers) == (
        "pusht", "transformer", 128, 4)  # fmt: skip
    assert (c.train.steps, c.train.lr, c.train.batch_size, c.eval.every) == (60000, 3e-4, 64, 5000)
    c = load_config(["recipe=arm_reach_dynamic", "train.steps=500", "policy.transformer.n_layers=2"])
    assert (c.task.name, c.train.steps, c.policy.transformer.n_layers) == ("arm_reach_dynamic", 500, 2)
