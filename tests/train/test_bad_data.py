"""Bad data fails at load time with a message that says what and where (episode, frame, key)."""

import numpy as np
import pytest

from streamdp.policy.config import ConfigError
from streamdp.policy.train.config import DatasetConfig
from streamdp.policy.train.data import DataError, FeatureMap, Window
from streamdp.policy.train.sources import LeRobotWindows, ZarrWindows, load_dataset

from .helpers import make_lerobot, train_inprocess, write_zarr

W = Window(2, 8)
FMAP = FeatureMap.from_keys("observation.state", "action", [])
CARD = {
    "name": "generic",
    "obs_mode": "state",
    "fps": None,
    "features": {"action": "action", "state": "observation.state"},
}


def test_missing_root_and_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        LeRobotWindows(tmp_path / "nope", FMAP, W)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="no meta/info.json"):
        LeRobotWindows(tmp_path / "plain", FMAP, W)


def test_missing_feature_key(arm_state_ds, tmp_path):
    # the image-mode card asks for a camera that a state-mode dataset lacks
    overrides = [f"dataset.root={arm_state_ds}", f"train.output_dir={tmp_path / 'run'}", "task.obs_mode=image"]
    with pytest.raises(DataError, match=r"has no feature 'observation.images.top' \(wanted as the camera 'top'\)"):
        train_inprocess(overrides)


def test_action_dim_mismatch(arm_state_ds, tmp_path):
    base = [f"dataset.root={arm_state_ds}", f"train.output_dir={tmp_path / 'run'}"]
    with pytest.raises(DataError, match=r"action has 3 dims, the card says action_dim=4"):
        train_inprocess([*base, "task.features.action_dim=4"])
    with pytest.raises(DataError, match=r"observation.state has 8 dims, the card says 6"):
        train_inprocess([*base, "task.features.state_dim.state=6"])
    with pytest.raises(ConfigError, match=r"policy.action_dim=4 but the dataset gives 3"):
        train_inprocess([*base, "policy.action_dim=4"])
    with pytest.raises(DataError, match=r"20 fps, the card says fps=10"):
        train_inprocess([*base, "task.fps=10"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # lerobot's own stats of the planted NaN/inf
@pytest.mark.parametrize(
    ("key", "episode", "frame", "value"),
    [("action", 1, 3, float("nan")), ("observation.state", 2, 0, float("inf"))],
)
def test_non_finite_values_name_episode_and_frame(tmp_path, key, episode, frame, value):
    root = make_lerobot(tmp_path / "ds", [10, 12, 9], bad={(key, episode, frame): value})
    with pytest.raises(DataError) as ei:
        LeRobotWindows(root, FMAP, W)
    msg = str(ei.value)
    assert f"{key!r} has a non-finite value" in msg
    assert f"episode {episode}, frame {frame}, dim 0 (j0." in msg


def test_short_episode_pad_or_error(tmp_path):
    root = make_lerobot(tmp_path / "ds", [12, 5, 12])
    with pytest.raises(DataError, match=r"episode 1 has 5 frames, shorter than the horizon Tp=8"):
        LeRobotWindows(root, FMAP, W, short_episodes="error")
    ds = LeRobotWindows(root, FMAP, W, short_episodes="pad")
    item = ds[12 + 4]  # last frame of the short episode
    assert (int(item["episode_index"]), int(item["frame_index"])) == (1, 4)
    assert item["action_is_pad"].tolist() == [False, False] + [True] * 6


def test_empty_dataset(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
             "action": {"dtype": "float32", "shape": (2,), "names": None}}  # fmt: skip
    LeRobotDataset.create("test/empty", fps=10, features=feats, root=tmp_path / "empty", use_videos=False).finalize()
    with pytest.raises(DataError, match=r"is empty \(0 episodes, 0 frames\)"):
        LeRobotWindows(tmp_path / "empty", FMAP, W)
    write_zarr(tmp_path / "empty.zarr", [])
    with pytest.raises(DataError, match="is empty"):
        ZarrWindows(tmp_path / "empty.zarr", W, fps=10)


def test_unreadable_or_missing_video(tmp_path):
    root = make_lerobot(tmp_path / "vid", [9, 9], image=(32, 32), video=True)  # SVT-AV1 crashes below 32x32
    fmap = FeatureMap.from_keys("observation.state", "action", ["observation.images.cam"])
    LeRobotWindows(root, fmap, W)  # intact: loads
    videos = sorted((root / "videos").rglob("*.mp4"))
    assert videos
    videos[0].write_bytes(b"\x00not a video" * 100)
    with pytest.raises(DataError, match=r"video videos/.*\.mp4 \(episodes \[0, 1\]\) is unreadable"):
        LeRobotWindows(root, fmap, W)
    videos[0].unlink()
    with pytest.raises(DataError, match=r"\(episodes \[0, 1\]\) is missing"):
        LeRobotWindows(root, fmap, W)


def test_zarr_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    eps = [{"state": rng.normal(size=(n, 2)).astype(np.float32), "action": rng.normal(size=(n, 2)).astype(np.float32)}
           for n in (10, 10)]  # fmt: skip
    eps[1]["action"][6, 1] = np.nan
    path = write_zarr(tmp_path / "b.zarr", eps)
    with pytest.raises(DataError, match=r"'data/action' has a non-finite value .* episode 1, frame 6, dim 1"):
        ZarrWindows(path, W, fps=10)
    with pytest.raises(
        DataError, match=r"has no array data/agent_pos \(wanted as the state\); it has \['action', 'state'\]"
    ):
        ZarrWindows(path, W, fps=10, state_keys=["agent_pos"])
    with pytest.raises(DataError, match="stores no fps"):
        load_dataset(CARD, DatasetConfig(format="zarr", root=str(path)), W)
    with pytest.raises(DataError, match="cannot open it as a replay buffer"):
        ZarrWindows(tmp_path, W, fps=10)


def test_dataset_root_required(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.root is not set: pass dataset.root="):
        train_inprocess([f"train.output_dir={tmp_path}"])


def test_batch_larger_than_dataset(tmp_path):
    root = make_lerobot(tmp_path / "ds", [6, 6])
    overrides = [f"dataset.root={root}", f"train.output_dir={tmp_path / 'run'}", "task=generic", "train.batch_size=64",
                 "policy=sdp_unet_tiny", "policy.horizon=8", "policy.n_action_steps=3"]  # fmt: skip
    with pytest.raises(DataError, match="12 samples, fewer than one global batch of 64"):
        train_inprocess(overrides)
