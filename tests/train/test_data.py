"""Sample interface of both dataset formats: LeRobot delta_timestamps windows, the in-memory fast path,
zarr replay buffers windowed identically, statistics, and the resumable distributed sampler."""

import numpy as np
import torch

from streamdp.policy.train.data import EpisodeWindows, FeatureMap, ResumableSampler, Window, joint_names_from
from streamdp.policy.train.sources import LeRobotWindows, ZarrWindows

from .helpers import make_lerobot, write_zarr

W = Window(n_obs_steps=2, horizon=12)
STATE_FMAP = FeatureMap.from_keys("observation.state", "action", [])


def test_delta_timestamps_layout():
    dt = Window(3, 8).delta_timestamps(10.0, ["observation.state"], "action")
    np.testing.assert_allclose(dt["observation.state"], [-0.2, -0.1, 0.0])
    # Tp action steps, the first To-1 in the past: (i - To + 1) / fps
    np.testing.assert_allclose(dt["action"], [(i - 2) / 10 for i in range(8)])


def test_fast_path_equals_lerobot_delta_timestamps(arm_state_ds):
    fast = LeRobotWindows(arm_state_ds, STATE_FMAP, W, cache_lowdim=True)
    slow = LeRobotWindows(arm_state_ds, STATE_FMAP, W, cache_lowdim=False)
    assert fast.fast and not slow.fast and len(fast) == len(slow) == fast.info.num_frames
    for i in range(len(fast)):
        a, b = fast[i], slow[i]  # slow: LeRobotDataset.__getitem__ with delta_timestamps
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (i, k)
    first = fast[0]
    assert first["observation.state"].shape == (2, 8) and first["action"].shape == (12, 3)
    assert first["action_is_pad"].tolist() == [True] + [False] * 11  # slot 0 lies before the episode
    assert torch.equal(first["observation.state"][0], first["observation.state"][1])  # history clamped
    end = fast.info.episode_lengths[0] - 1
    last = fast[end]
    assert int(last["episode_index"]) == 0 and int(last["frame_index"]) == end
    assert last["action_is_pad"].tolist() == [False, False] + [True] * 10


def test_info_and_stats_from_metadata(arm_state_ds):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    ds = LeRobotWindows(arm_state_ds, STATE_FMAP, W)
    info = ds.info
    assert (info.fps, info.state_dim, info.action_dim, info.num_episodes) == (20.0, 8, 3, 3)
    assert info.joint_names == ["joint1", "joint2", "joint3"]
    assert info.action_names == ["joint1.target_pos", "joint2.target_pos", "joint3.target_pos"]
    meta = LeRobotDatasetMetadata("x", root=arm_state_ds)
    np.testing.assert_allclose(ds.stats["action"]["max"], meta.stats["action"]["max"])
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], meta.stats["observation.state"]["std"])


def test_joint_names_rule():
    assert joint_names_from(["a.pos", "b.pos", "a.vel", "target.x"]) == ["a", "b"]
    assert joint_names_from(["agent.x", "agent.y"]) == ["agent.x", "agent.y"]
    # PushT: the actions are position targets of the first two state entries, the rest is the block
    pusht = ["agent.x", "agent.y", "block.x", "block.y", "block.cos_theta", "block.sin_theta"]
    assert joint_names_from(pusht, ["agent.target_x", "agent.target_y"]) == ["agent.x", "agent.y"]
    assert joint_names_from(pusht, ["eef.dx", "gripper"]) == pusht  # no action is a state's target


def test_image_samples(arm_image_ds):
    fmap = FeatureMap.from_keys("observation.state", "action", ["observation.images.top"])
    ds = LeRobotWindows(arm_image_ds, fmap, W)
    assert ds.info.camera_names == ["top"] and ds.info.image_shape == (3, 32, 32) and not ds.fast
    item = ds[3]
    img = item["observation.images.top"]
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0


def _same_samples(cached: LeRobotWindows, disk: LeRobotWindows) -> None:
    n0 = cached.info.episode_lengths[0]
    for i in [0, 1, 5, n0 - 1, n0, n0 + 1, len(cached) - 1, *range(7, len(cached), 23)]:
        a, b = cached[i], disk[i]
        assert a.keys() == b.keys(), i
        for k in a:
            assert torch.equal(a[k], b[k]), (i, k)


def test_frames_decoded_into_memory_equal_lerobot_decoding(arm_image_ds):
    """dataset.cache_frames_mb, PNG ``image`` features: every sample's camera window (first frames clamped,
    both episodes) is the frame LeRobotDataset returns, and the state/action windows too."""
    fmap = FeatureMap.from_keys("observation.state", "action", ["observation.images.top"])
    cached = LeRobotWindows(arm_image_ds, fmap, W, cache_frames_mb=64)
    disk = LeRobotWindows(arm_image_ds, fmap, W)
    assert cached.fast and not disk.fast and cached._frames["observation.images.top"].dtype == np.uint8
    _same_samples(cached, disk)
    n0 = cached.info.episode_lengths[0]
    assert not torch.equal(cached[n0]["observation.images.top"], cached[n0 - 1]["observation.images.top"])
    # over the budget, or off: frames stay on disk and are decoded per sample
    assert not LeRobotWindows(arm_image_ds, fmap, W, cache_frames_mb=0.01).fast
    assert not LeRobotWindows(arm_image_ds, fmap, W, cache_frames_mb=0).fast


def test_video_frames_decoded_into_memory_equal_lerobot_decoding(tmp_path):
    """The same for an mp4 ``video`` feature: three episodes packed in one file, each at its own offset."""
    root = make_lerobot(tmp_path / "vid", [17, 9, 23], image=(24, 32), video=True)
    fmap = FeatureMap.from_keys("observation.state", "action", ["observation.images.cam"])
    cached = LeRobotWindows(root, fmap, W, cache_frames_mb=64)
    disk = LeRobotWindows(root, fmap, W)
    assert cached.fast and cached.video_keys and cached._frames["observation.images.cam"].shape == (49, 3, 24, 32)
    _same_samples(cached, disk)


def test_zarr_windows_equal_lerobot_windows(arm_state_ds, tmp_path):
    """The same frames as a replay buffer give the same samples (windowing, clamping, padding)."""
    lr = LeRobotWindows(arm_state_ds, STATE_FMAP, W)
    arrays, lengths = lr.lowdim_arrays(), lr.info.episode_lengths
    starts = np.cumsum([0, *lengths[:-1]])
    eps = [
        {"state": arrays["observation.state"][s : s + n], "action": arrays["action"][s : s + n]}
        for s, n in zip(starts, lengths)
    ]
    z = ZarrWindows(write_zarr(tmp_path / "buf.zarr", eps, chunks=16), W, fps=20)
    assert len(z) == len(lr) and z.info.state_dim == 8 and z.info.action_dim == 3
    for i in range(len(z)):
        a, b = z[i], lr[i]
        for k in ("observation.state", "action", "action_is_pad", "episode_index", "frame_index"):
            assert torch.equal(a[k], b[k]), (i, k)
    # Normalizer.compute over all frames agrees with LeRobot's stats.json
    for key in ("observation.state", "action"):
        for s in ("min", "max", "mean"):
            np.testing.assert_allclose(z.stats[key][s], lr.stats[key][s], rtol=1e-5, atol=1e-6)


def test_zarr_images_hwc_uint8(tmp_path):
    rng = np.random.default_rng(0)
    eps = [
        {
            "agent_pos": rng.normal(size=(n, 2)).astype(np.float32),
            "keypoint": rng.normal(size=(n, 3, 2)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "img": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        }
        for n in (15, 20)
    ]
    z = ZarrWindows(
        write_zarr(tmp_path / "b.zarr", eps), W, fps=10, state_keys=["keypoint", "agent_pos"], cameras={"top": "img"}
    )
    assert z.info.state_dim == 8 and z.info.image_shape == (3, 16, 16) and z.info.camera_names == ["top"]
    item = z[16]  # episode 1, frame 1
    assert (int(item["episode_index"]), int(item["frame_index"])) == (1, 1)
    expect = torch.from_numpy(eps[1]["img"][[0, 1]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(item["observation.images.top"], expect)
    state = np.concatenate([eps[1]["keypoint"].reshape(20, -1), eps[1]["agent_pos"]], axis=1)
    np.testing.assert_array_equal(item["observation.state"].numpy(), state[[0, 1]])


def test_float_images_scaled_once_per_camera(tmp_path):
    """A dark window of a 0-255 float camera (every value below 1) is divided by 255 like a bright one:
    the divisor is decided per camera at load time, not from each window's maximum."""
    rng = np.random.default_rng(1)
    dark = rng.uniform(0, 0.9, (12, 8, 8, 3)).astype(np.float32)  # 0-255 units, a nearly black scene
    bright = rng.uniform(0, 255, (12, 8, 8, 3)).astype(np.float32)
    eps = [
        {"state": rng.normal(size=(12, 2)).astype(np.float32), "action": rng.normal(size=(12, 2)).astype(np.float32),
         "img": img}
        for img in (dark, bright)
    ]  # fmt: skip
    z = ZarrWindows(write_zarr(tmp_path / "f.zarr", eps), W, fps=10, cameras={"top": "img"})
    mem = EpisodeWindows(
        [{"observation.state": e["state"], "action": e["action"], "observation.images.top": e["img"]} for e in eps],
        W,
        ["observation.images.top"],
    )
    for ds in (z, mem):
        for ep, frames, i in ((0, dark, 5), (1, bright, 12 + 5)):
            got = ds[i]["observation.images.top"]
            expect = torch.from_numpy(frames[[4, 5]]).permute(0, 3, 1, 2) / 255
            assert int(ds[i]["episode_index"]) == ep
            torch.testing.assert_close(got, expect, rtol=0, atol=0)
    # a camera stored as floats in [0, 1] is left as it is
    unit = [{**e, "img": e["img"] / 255.0} for e in eps]
    zu = ZarrWindows(write_zarr(tmp_path / "u.zarr", unit), W, fps=10, cameras={"top": "img"})
    torch.testing.assert_close(zu[5]["observation.images.top"], z[5]["observation.images.top"])


def test_episode_windows_batch_equals_samples_and_zarr(tmp_path):
    """In-memory episodes are windowed by the same code as the datasets on disk; a batch is its samples."""
    rng = np.random.default_rng(2)
    eps = [
        {"observation.state": rng.normal(size=(n, 3)).astype(np.float32),
         "action": rng.normal(size=(n, 2)).astype(np.float32)}
        for n in (5, 17, 30)
    ]  # fmt: skip
    mem = EpisodeWindows(eps, W)
    z = ZarrWindows(
        write_zarr(tmp_path / "m.zarr", [{"state": e["observation.state"], "action": e["action"]} for e in eps]),
        W,
        fps=10,
    )
    assert len(mem) == len(z) == 52 and mem.info.episode_lengths == [5, 17, 30]
    idx = np.array([0, 4, 5, 21, 51, 3])
    batch, zbatch = mem.batch(idx), z.batch(idx)
    assert batch.keys() == zbatch.keys() == {"observation.state", "action", "action_is_pad"}
    assert all(torch.equal(batch[k], zbatch[k]) for k in batch)
    for j, i in enumerate(idx):
        a, b = mem[i], z[i]
        for k in ("observation.state", "action", "action_is_pad"):
            assert torch.equal(a[k], b[k]) and torch.equal(batch[k][j], a[k]), (i, k)
    for key in ("observation.state", "action"):
        for stat in ("min", "max", "mean", "std"):
            np.testing.assert_allclose(mem.stats[key][stat], z.stats[key][stat], rtol=1e-6)


class _Len:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_sampler_ranks_partition_global_batches_and_resume():
    ds, B = _Len(103), 8
    single = list(ResumableSampler(ds, B, seed=5))
    assert len(single) == (103 // B) * B and len(set(single)) == len(single)
    per_rank = []
    for r in range(2):
        s = ResumableSampler(ds, B, num_replicas=2, rank=r, seed=5)
        per_rank.append(np.asarray(list(s)).reshape(-1, B // 2))
    merged = np.concatenate(per_rank, axis=1).reshape(-1)  # global batch i = rank 0 slice + rank 1 slice
    assert merged.tolist() == single
    s = ResumableSampler(ds, B, seed=5)
    s.set_position(epoch=0, batch=3)
    assert list(s) == single[3 * B :] and len(s) == len(single) - 3 * B
    s.set_position(epoch=1, batch=0)
    assert list(s) != single  # a new epoch reshuffles
    s2 = ResumableSampler(ds, B, seed=5)
    s2.set_epoch(1)
    assert list(s) == list(s2)
