"""Data-parallel training: two gloo ranks under torchrun with the same global batch reach the same
parameters as one process (same data order, same per-sample noise, loss normalised over the global batch)."""

import subprocess

import pytest
from safetensors.torch import load_file

from streamdp.policy import Policy

from .helpers import free_port, python, read_metrics, subprocess_env, tiny_overrides, train_inprocess

STEPS = 16


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(arm_state_ds, tmp_path):
    common = tiny_overrides(arm_state_ds, None, steps=STEPS, batch=16, **{"train.checkpoint_every": STEPS // 2})
    common = [o for o in common if not o.startswith("train.output_dir=")]
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    cmd = [
        python(), "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "streamdp.policy.train", *common, f"train.output_dir={ddp_run}",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "global batch 16 on 2 rank(s)" in out.stdout + out.stderr
    assert not (ddp_run / "rank1").exists() and not list(tmp_path.glob("outputs"))  # rank 1 wrote nothing

    train_inprocess([*common, f"train.output_dir={single_run}"])

    la, lb = read_metrics(ddp_run), read_metrics(single_run)
    assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1))
    for s in la:
        assert abs(la[s] - lb[s]) <= 1e-5 * max(1.0, abs(lb[s])), (s, la[s], lb[s])
    for step in (STEPS // 2, STEPS):
        ts = f"checkpoints/step_{step:08d}/training_state/model.safetensors"
        a, b = load_file(str(ddp_run / ts)), load_file(str(single_run / ts))
        assert a.keys() == b.keys()
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 1e-4, (step, diff)
    # the parameters really moved between the two checkpoints, so the agreement is not trivial
    half = load_file(str(single_run / f"checkpoints/step_{STEPS // 2:08d}/training_state/model.safetensors"))
    assert max((half[k] - b[k]).abs().max().item() for k in b) > 1e-3
    Policy.from_pretrained(ddp_run / "checkpoints/last/pretrained")
