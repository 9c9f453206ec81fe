"""Training on a multi-task LeRobot dataset (issue 14): each window carries its frames' task rows, the
policy's `tasks` come from the data, and the trained checkpoint keeps them. Fast: synthetic datasets
written by lerobot (the LIBERO suite end to end is tests/sim/test_libero_suite.py)."""

from __future__ import annotations

import numpy as np
import pytest

from streamdp.policy import Policy, UnknownTaskError
from streamdp.policy.encoders import TASK_INDEX_KEY
from streamdp.policy.train.config import policy_config
from streamdp.policy.train.data import FeatureMap, Window
from streamdp.policy.train.sources import LeRobotWindows

from .helpers import make_lerobot, tiny_overrides, train_inprocess

TASKS = ("stack the red block", "open the drawer")


def test_windows_carry_each_frames_task_row(tmp_path):
    root = make_lerobot(tmp_path / "ds", [7, 9, 8], tasks=TASKS, image=(8, 8))  # episodes: task 0, 1, 0
    fmap = FeatureMap.from_keys("observation.state", "action", ["observation.images.cam"])
    ds = LeRobotWindows(root, fmap, Window(2, 6))  # a camera: samples come from LeRobotDataset itself
    assert ds.info.tasks == list(TASKS) and ds.info.conditioning_tasks == list(TASKS)
    rows = [int(ds[i][TASK_INDEX_KEY][-1]) for i in range(len(ds))]
    assert rows == [0] * 7 + [1] * 9 + [0] * 8
    assert ds[7][TASK_INDEX_KEY].tolist() == [1, 1]  # the first frame of episode 1: its history is clamped to it
    batch = ds.batch([0, 8, 20])
    assert batch[TASK_INDEX_KEY].tolist() == [[0, 0], [1, 1], [0, 0]]
    lowdim = LeRobotWindows(make_lerobot(tmp_path / "lowdim", [7, 9, 8], tasks=TASKS), FeatureMap(), Window(2, 6))
    assert lowdim.fast and [int(lowdim[i][TASK_INDEX_KEY][-1]) for i in range(len(lowdim))] == rows
    cfg = policy_config({"action_dim": None, "n_obs_steps": 2, "horizon": 8, "n_action_steps": 3}, ds.info)
    assert cfg.tasks == list(TASKS)


def test_a_single_task_dataset_gives_no_task_input(tmp_path):
    ds = LeRobotWindows(make_lerobot(tmp_path / "ds", [7, 9]), FeatureMap(), Window(2, 6))
    assert ds.info.tasks == ["test"] and ds.info.conditioning_tasks == []
    assert TASK_INDEX_KEY not in ds[0]
    assert policy_config({"n_obs_steps": 2, "horizon": 8, "n_action_steps": 3}, ds.info).tasks == []


def test_training_keeps_the_task_list_in_the_checkpoint(tmp_path):
    root = make_lerobot(tmp_path / "ds", [20, 20, 20, 20], tasks=TASKS)
    res = train_inprocess(tiny_overrides(root, tmp_path / "run", steps=6, batch=8, **{"task": "generic"}))
    pol = Policy.from_pretrained(res.checkpoint / "pretrained")
    assert pol.config.tasks == list(TASKS) and pol.model.encoder.task_embed.num_embeddings == 2
    obs = {"observation.state": np.zeros(2, dtype=np.float32)}
    for task in TASKS:
        pol.reset()
        assert np.isfinite(pol.select_action({**obs, "task": task})).all()
    with pytest.raises(UnknownTaskError, match="knows 2 task"):
        pol.select_action({**obs, "task": "fold the towel"})
