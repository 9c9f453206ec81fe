"""End-to-end training: the loss falls, the run directory holds what it should, and the exported checkpoint
loads with Policy.from_pretrained and acts."""

import json
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamdp.policy import Policy
from streamdp.policy.config import ConfigError
from streamdp.policy.train.checkpoints import load_training_state, verify_checkpoint

from .helpers import make_lerobot, python, read_metrics, subprocess_env, tiny_overrides, train_inprocess, write_zarr


def test_lowdim_training_learns_and_exports(arm_state_ds, tmp_path):
    run = tmp_path / "run"
    res = train_inprocess(
        tiny_overrides(arm_state_ds, run, steps=300, batch=32, **{"train.checkpoint_every": 100, "train.keep_last": 2})
    )
    assert res.step == 300 and res.run_dir == run.resolve()
    losses = read_metrics(run)
    assert sorted(losses) == list(range(1, 301))
    first, last = np.mean([losses[s] for s in range(1, 31)]), np.mean([losses[s] for s in range(271, 301)])
    assert last < 0.6 * first, (first, last)
    # run directory: resolved config, dataset description, TensorBoard events, last-k checkpoints
    assert "root: " + str(arm_state_ds) in (run / "config.yaml").read_text()
    assert json.loads((run / "dataset.json").read_text())["num_episodes"] == 3
    assert list((run / "tb").glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last", "step_00000200", "step_00000300"]
    assert (run / "checkpoints" / "last").resolve().name == "step_00000300"
    verify_checkpoint(run / "checkpoints" / "last")
    # the export holds the EMA weights and is what Policy.from_pretrained loads
    pre = run / "checkpoints" / "last" / "pretrained"
    ema = load_training_state(run / "checkpoints" / "last")["ema"]["shadow"]  # read back from the export
    raw = load_file(str(run / "checkpoints" / "last" / "training_state" / "model.safetensors"))
    exported = load_file(str(pre / "model.safetensors"))
    assert ema.keys() == exported.keys() and all(torch.equal(ema[k], exported[k]) for k in ema)
    assert any(not torch.equal(raw[k], exported[k]) for k in raw)  # the raw weights are not the EMA ones
    policy = Policy.from_pretrained(pre)
    c = policy.config
    assert (c.state_dim, c.action_dim, c.fps) == (8, 3, 20.0)
    assert c.joint_names == ["joint1", "joint2", "joint3"] and c.camera_names == []
    assert policy.extras["task"] == "arm_reach_dynamic" and policy.extras["train"]["step"] == 300
    policy.reset()
    for _ in range(3):
        a = policy.select_action({"observation.state": np.zeros(8, dtype=np.float32)})
        assert a.shape == (3,) and np.isfinite(a).all()


def test_image_training_exports_a_camera_policy(arm_image_ds, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_overrides(arm_image_ds, run, steps=6, batch=4, **{"train.checkpoint_every": 3})
    res = train_inprocess([*overrides, "task=arm_reach_dynamic_image", "task.features.image_shape=[32,32,3]"])
    assert res.step == 6
    losses = read_metrics(run)
    assert len(losses) == 6 and all(np.isfinite(v) for v in losses.values())
    policy = Policy.from_pretrained(run / "checkpoints" / "last" / "pretrained")
    assert policy.config.camera_names == ["top"] and policy.config.image_shape == (3, 32, 32)
    obs = {"observation.state": np.zeros(6, np.float32), "observation.images.top": np.zeros((32, 32, 3), np.uint8)}
    a = policy.select_action(obs)
    assert a.shape == (3,) and np.isfinite(a).all()


def test_zarr_replay_buffer_trains(tmp_path):
    rng = np.random.default_rng(0)
    eps = []
    for n in (40, 50, 45):  # a 2-D point pushed towards a goal; state = position
        pos = np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0).astype(np.float32)
        eps.append({"agent_pos": pos, "action": (pos + 0.1).astype(np.float32),
                    "img": rng.integers(0, 255, (n, 24, 24, 3), dtype=np.uint8)})  # fmt: skip
    buf = write_zarr(tmp_path / "replay.zarr", eps)
    run = tmp_path / "run"
    overrides = tiny_overrides(buf, run, steps=8, batch=8, **{"train.checkpoint_every": 4})
    overrides += ["task=generic", "task.fps=10", "dataset.format=zarr", "dataset.zarr.state=[agent_pos]",
                  "dataset.zarr.images={top: img}", "dataset.zarr.state_names=[x.pos,y.pos]"]  # fmt: skip
    res = train_inprocess(overrides)
    assert res.step == 8 and np.isfinite(res.last_loss)
    policy = Policy.from_pretrained(run / "checkpoints" / "last" / "pretrained")
    c = policy.config
    assert (c.state_dim, c.action_dim, c.fps, c.image_shape) == (2, 2, 10.0, (3, 24, 24))
    assert c.joint_names == ["x", "y"] and c.camera_names == ["top"]
    chunk = policy.predict_action_chunk(
        {"observation.state": np.zeros(2, np.float32), "observation.images.top": np.zeros((24, 24, 3), np.uint8)}
    )
    assert chunk.shape == (c.n_action_steps, 2) and np.isfinite(chunk).all()


def test_resume_refuses_a_different_policy(arm_state_ds, tmp_path):
    run = tmp_path / "run"
    train_inprocess(tiny_overrides(arm_state_ds, run, steps=4, batch=8, **{"train.checkpoint_every": 2}))
    with pytest.raises(ConfigError, match=r"would change the run: policy.horizon 12 -> 16"):
        train_inprocess([*tiny_overrides(arm_state_ds, run, steps=8, batch=8), "resume=true", "policy.horizon=16"])
    with pytest.raises(ConfigError, match=r"train.batch_size 8 -> 4"):
        train_inprocess([*tiny_overrides(arm_state_ds, run, steps=8, batch=4), "resume=true"])


@pytest.mark.slow
def test_cli_prints_resolved_config_and_reports_bad_data(arm_state_ds, tmp_path):
    cmd = [python(), "-m", "streamdp.policy.train"]
    out = subprocess.run(
        [*cmd, "--cfg", "job", "task=pusht", "policy=sdp_transformer", f"dataset.root={arm_state_ds}", "train.steps=7"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert "denoiser: transformer" in out and "steps: 7" in out and f"root: {arm_state_ds}" in out
    assert "name: pusht" in out
    bad = subprocess.run(
        [*cmd, "task.features.action_dim=5", f"dataset.root={arm_state_ds}", f"train.output_dir={tmp_path / 'r'}"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "DataError" in bad.stderr and "action has 3 dims, the card says action_dim=5" in bad.stderr


def test_image_mode_without_a_named_camera_lists_the_datasets_image_keys(tmp_path):
    """task.obs_mode=image alone used to train a state-only policy without a word."""
    lerobot = make_lerobot(tmp_path / "ds", [20, 20], image=(16, 16))
    base = ["task=generic", "task.obs_mode=image"]
    want = r"no camera is named.*image keys: \[.observation.images.cam.\].*images=\[observation.images.cam\]"
    with pytest.raises(ConfigError, match=want):
        train_inprocess([*tiny_overrides(lerobot, tmp_path / "run", steps=2, batch=4), *base])
    rng = np.random.default_rng(0)
    eps = [{"state": rng.normal(size=(30, 2)).astype(np.float32), "action": rng.normal(size=(30, 2)).astype(np.float32),
            "img": rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)}]  # fmt: skip
    buf = write_zarr(tmp_path / "replay.zarr", eps)
    with pytest.raises(ConfigError, match=r"its image keys: \['img'\].*dataset.zarr.images=\{top: img\}"):
        train_inprocess([*tiny_overrides(buf, tmp_path / "run2", steps=2, batch=4), *base, "task.fps=10",
                         "dataset.format=zarr"])  # fmt: skip
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_readme_zarr_example_trains_on_a_diffusion_policy_pusht_layout(tmp_path):
    """The README's zarr command on a buffer with diffusion_policy's PushT arrays
    (action, img, keypoint, n_contacts, state)."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = re.search(r"streamdp-train task=generic .*dataset.format=zarr.*\\\n(.*)\n", readme)
    assert line is not None
    args = shlex.split(line.group(0).replace("\\\n", " "))[1:]
    rng = np.random.default_rng(0)
    eps = [{"action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "img": rng.integers(0, 255, (n, 24, 24, 3), dtype=np.uint8),
            "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
            "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
            "state": rng.uniform(0, 512, (n, 5)).astype(np.float32)} for n in (30, 34)]  # fmt: skip
    buf = write_zarr(tmp_path / "pusht.zarr", eps)
    args = [a if not a.startswith("dataset.root=") else f"dataset.root={buf}" for a in args]
    res = train_inprocess([*args, *tiny_overrides(buf, tmp_path / "run", steps=2, batch=4)])
    c = Policy.from_pretrained(tmp_path / "run" / "checkpoints" / "last" / "pretrained").config
    assert res.step == 2 and (c.state_dim, c.action_dim, c.camera_names) == (5, 2, ["top"])
