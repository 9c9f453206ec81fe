import json

import numpy as np
import pytest
import torch

from streamdp.policy import CheckpointError, CheckpointMismatchError, ConfigError, Policy

from .helpers import tiny_policy


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_round_trip_is_bit_exact(tmp_path, denoiser):
    pol = tiny_policy(denoiser=denoiser, joint_names=["a", "b"], fps=20.0)
    for p in pol.model.parameters():  # make weights non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    path = pol.save_pretrained(tmp_path / "ckpt")
    assert sorted(f.name for f in path.iterdir()) == ["config.json", "model.safetensors", "stats.safetensors"]
    meta = json.loads((path / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["policy"]["fps"] == 20.0
    loaded = Policy.from_pretrained(path)
    a, b = pol.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == pol.config
    for key in ("action", "observation.state"):
        for stat, v in pol.normalizer.stats[key].items():
            assert torch.equal(v, loaded.normalizer.stats[key][stat])
    # same seed, same outputs
    obs = {"observation.state": np.array([0.3, -0.2])}
    p1, p2 = Policy.from_pretrained(path, seed=3), Policy.from_pretrained(path, seed=3)
    np.testing.assert_array_equal(p1.predict_action_chunk(obs), p2.predict_action_chunk(obs))


def test_save_is_atomic_over_existing(tmp_path):
    pol = tiny_policy()
    path = pol.save_pretrained(tmp_path / "ckpt")
    pol.save_pretrained(path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or backup dirs left behind


def test_missing_file(tmp_path):
    path = tiny_policy().save_pretrained(tmp_path / "ckpt")
    (path / "stats.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing \['stats.safetensors'\]"):
        Policy.from_pretrained(path)
    with pytest.raises(CheckpointError, match="not a directory"):
        Policy.from_pretrained(tmp_path / "nope")


def test_truncated_weights(tmp_path):
    path = tiny_policy().save_pretrained(tmp_path / "ckpt")
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is unreadable \(truncated or corrupt\?\)"):
        Policy.from_pretrained(path)


def test_unknown_version(tmp_path):
    path = tiny_policy().save_pretrained(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    meta["format_version"] = 99
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown format_version 99"):
        Policy.from_pretrained(path)


def test_shape_mismatch(tmp_path):
    path = tiny_policy().save_pretrained(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    meta["policy"]["transformer"]["d_model"] = 64  # irrelevant to a unet: still loads
    meta["policy"]["unet"]["down_dims"] = [16, 48]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        Policy.from_pretrained(path)


def test_stats_mismatch(tmp_path):
    path = tiny_policy().save_pretrained(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    meta["policy"]["state_dim"] = 3
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match="'observation.state' have 2 dims, config says 3"):
        Policy.from_pretrained(path)


def test_bad_override_and_robot_mismatch(tmp_path):
    path = tiny_policy(joint_names=["j1", "j2"]).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="sampler must be one of"):
        Policy.from_pretrained(path, sampler="euler")
    pol = Policy.from_pretrained(path, sampler="ddim", num_inference_steps=5)
    assert pol.sampler == "ddim"
    pol.check_compatible(joint_names=["j1", "j2"], action_dim=2)
    with pytest.raises(CheckpointMismatchError, match=r"joint names/order \['j2', 'j1'\]"):
        pol.check_compatible(joint_names=["j2", "j1"])
    with pytest.raises(CheckpointMismatchError, match="fps 30"):
        pol.check_compatible(fps=30.0)


def _modes(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_checkpoints_honour_the_umask(tmp_path, umask, dir_mode, file_mode):
    """A ROS node running as another user must be able to read a saved or recalibrated checkpoint."""
    import os

    from streamdp.policy.calibration import rti_cli, save_observations

    from ..accel.util import KW, obs_stream, perturb
    from ..accel.util import tiny_policy as tiny_tf

    old = os.umask(umask)
    try:
        ckpt = perturb(tiny_tf(seed=1, sampler="sdp", **KW)).save_pretrained(tmp_path / "ckpt")
        assert set(_modes(ckpt).values()) <= {dir_mode, file_mode} and _modes(ckpt)["."] == dir_mode
        data = save_observations(tmp_path / "obs.npz", [obs_stream(13)])
        rti_cli([f"checkpoint={ckpt}", f"dataset={data}", "candidates=9,99", "max_obs=3"])  # rewrites it
        modes = _modes(ckpt)
        assert modes["."] == dir_mode and all(m == file_mode for k, m in modes.items() if k != ".")
    finally:
        os.umask(old)
