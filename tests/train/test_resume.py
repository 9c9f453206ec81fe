"""kill -9 in the middle of training, then resume=true: training continues from the newest checkpoint,
nothing on disk is corrupt, and the result is bit-identical to a run that was never interrupted."""

import json
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from streamdp.policy import Policy
from streamdp.policy.train.checkpoints import list_checkpoints, verify_checkpoint

from .helpers import python, read_metrics, subprocess_env, tiny_overrides, train_inprocess

STEPS, EVERY = 160, 20


def _overrides(root, run):
    return tiny_overrides(root, run, steps=STEPS, batch=16, **{"train.checkpoint_every": EVERY, "train.log_every": 5})


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(arm_state_ds, tmp_path):
    run = tmp_path / "killed"
    cmd = [python(), "-m", "streamdp.policy.train", *_overrides(arm_state_ds, run)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(run / "checkpoints"):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup, possibly in the middle of writing the next checkpoint
        assert proc.wait(timeout=60) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    done = [s for s, _ in list_checkpoints(run / "checkpoints")]
    assert done and max(done) < STEPS, "the run finished before it was killed"
    for _, path in list_checkpoints(run / "checkpoints"):
        verify_checkpoint(path)  # every safetensors file loads, every JSON parses
    killed_at = max(done)

    resumed = subprocess.run([*cmd, "resume=true"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'}" in resumed.stdout + resumed.stderr
    trainer = json.loads((run / "checkpoints" / "last" / "training_state" / "trainer.json").read_text())
    assert trainer["step"] == STEPS

    # the same run without interruption (same seed), in this process
    ref = tmp_path / "uninterrupted"
    train_inprocess(_overrides(arm_state_ds, ref))

    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, STEPS + 1))  # no gap, no duplicate
    a, b = read_metrics(run), read_metrics(ref)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))  # step counter continued without a gap
    resumed_steps = range(killed_at + 1, STEPS + 1)
    assert [a[s] for s in resumed_steps] == [b[s] for s in resumed_steps]  # loss continuity, exactly
    for name in ("training_state/model", "pretrained/model", "training_state/optimizer"):  # raw, EMA, Adam
        x = load_file(str(run / "checkpoints" / "last" / f"{name}.safetensors"))
        y = load_file(str(ref / "checkpoints" / "last" / f"{name}.safetensors"))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (name, k)
    for f in ("scheduler.json", "trainer.json", "ema.json"):
        assert (run / "checkpoints" / "last" / "training_state" / f).read_text() == (
            ref / "checkpoints" / "last" / "training_state" / f
        ).read_text()
    Policy.from_pretrained(run / "checkpoints" / "last" / "pretrained")
