"""Writing shape-(1,) features (next.reward / next.done / next.success, as in the public lerobot/pusht schema)
with lerobot 0.4.4 under the pinned numpy: plain LeRobotDataset fails in save_episode, LeRobotWriter writes a
dataset that LeRobotDataset reads back with the same values."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

from streamdp.sim.lerobot_writer import LeRobotWriter, scalar_columns  # noqa: E402
from tests.train.helpers import PUBLIC_PUSHT_FEATURES, make_public_pusht  # noqa: E402

SCALARS = {
    "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
    "action": {"dtype": "float32", "shape": (2,), "names": None},
    "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    "next.done": {"dtype": "bool", "shape": (1,), "names": None},
}


def _frame(t: int, n: int) -> dict:
    return {"observation.state": np.full(2, t, np.float32), "action": np.full(2, -t, np.float32),
            "next.reward": np.array([0.25 * t], np.float32), "next.done": np.array([t == n - 1]), "task": "t"}


def test_plain_lerobot_cannot_save_shape_1_features_under_the_pinned_numpy(tmp_path):
    """The root cause, kept as a test: when it stops failing (a lerobot or numpy fix), LeRobotWriter can go."""
    import datasets

    datasets.disable_progress_bars()
    ds = LeRobotDataset.create("t/plain", fps=10, features=SCALARS, root=tmp_path / "plain", use_videos=False)
    for t in range(3):
        ds.add_frame(_frame(t, 3))
    with pytest.raises(TypeError, match="only 0-dimensional arrays can be converted to Python scalars"):
        ds.save_episode()


def test_writer_round_trips_shape_1_features(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    assert scalar_columns(SCALARS) == ["next.reward", "next.done"]
    root = tmp_path / "scalars"
    ds = LeRobotWriter.create("t/scalars", fps=10, features=SCALARS, root=root, use_videos=False)
    lengths = (4, 3)
    for n in lengths:
        for t in range(n):
            ds.add_frame(_frame(t, n))
        ds.save_episode()
    ds.finalize()

    back = LeRobotDataset("t/scalars", root=root)
    assert back.num_episodes == 2 and back.num_frames == sum(lengths)
    assert tuple(back.meta.features["next.reward"]["shape"]) == (1,)
    i = 0
    for n in lengths:
        for t in range(n):
            item = back[i]
            assert float(item["next.reward"]) == pytest.approx(0.25 * t)
            assert bool(item["next.done"]) == (t == n - 1)
            np.testing.assert_array_equal(item["observation.state"].numpy(), np.full(2, t, np.float32))
            i += 1
    stats = back.meta.stats["next.reward"]  # lerobot's own statistics, per-dim like any other feature
    assert stats["max"].shape == (1,) and stats["max"][0] == pytest.approx(0.75)


def test_public_pusht_layout_with_video_reads_back(tmp_path):
    """The full public lerobot/pusht schema (a video camera named observation.image) written and read back."""
    before = os.sched_getscheduler(0)
    root = make_public_pusht(tmp_path / "pusht", lengths=(6, 5))
    # the video encoder leaves a root process in SCHED_FIFO 99; the writer puts it back
    assert os.sched_getscheduler(0) == before == os.SCHED_OTHER
    back = LeRobotDataset("lerobot/pusht", root=root)
    assert back.num_episodes == 2 and back.num_frames == 11
    assert back.meta.video_keys == ["observation.image"]
    for key, ft in PUBLIC_PUSHT_FEATURES.items():
        assert tuple(back.meta.features[key]["shape"]) == ft["shape"], key
    last = back[5]
    assert last["observation.image"].shape == (3, 96, 96)
    assert bool(last["next.done"]) and bool(last["next.success"]) and float(last["next.reward"]) == 1.0
    assert not bool(back[6]["next.done"])
