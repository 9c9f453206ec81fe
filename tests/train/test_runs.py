"""The run directory (issue #16): a new run never mixes into an old one, a failing run leaves no folder,
``resume=true`` with only the run directory continues the run as it was configured, a crash's leftovers
(dangling ``last``, half-written step directories) do not stop a resume, the log follows the run, and a
checkpoint holds each copy of the weights once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamdp.policy import Policy
from streamdp.policy.config import ConfigError
from streamdp.policy.train.checkpoints import (
    find_checkpoint,
    list_checkpoints,
    load_training_state,
    point_last,
    prune,
    verify_checkpoint,
)
from streamdp.policy.train.cli import main

from .helpers import python, read_metrics, subprocess_env, tiny_overrides, train_inprocess


def _ov(root, run, steps, **kw):
    return tiny_overrides(root, run, steps=steps, batch=8, **{"train.checkpoint_every": 2, **kw})


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def _cli(args, monkeypatch, capsys) -> tuple[int, str]:
    """streamdp-train in this process (refusals happen before hydra starts)."""
    monkeypatch.setattr(sys, "argv", ["streamdp-train"])
    with pytest.raises(SystemExit) as ei:
        main(args)
    return ei.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------------ 1: fresh runs
def test_new_run_refuses_a_folder_holding_a_run(arm_state_ds, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train_inprocess(_ov(arm_state_ds, run, 8, **{"train.keep_last": 2}))
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"already holds a run .*resume=true.*train.overwrite=true"):
        train_inprocess(_ov(arm_state_ds, run, 4))
    code, err = _cli(_ov(arm_state_ds, run, 4), monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "already holds a run" in err, err
    assert _snapshot(run) == before  # refused before anything was written


def test_overwrite_replaces_only_the_old_runs_files(arm_state_ds, tmp_path):
    run = tmp_path / "run"
    train_inprocess(_ov(arm_state_ds, run, 12, **{"train.keep_last": 2}))  # further along: steps 10, 12
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "README").write_text("mine too")
    res = train_inprocess([*_ov(arm_state_ds, run, 4, **{"train.keep_last": 2}), "train.overwrite=true"])
    assert res.step == 4
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]  # not pruned by the old 10, 12
    assert (run / "checkpoints" / "last").resolve().name == "step_00000004"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "README").is_file()


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    for s in (2, 100, 200):
        (tmp_path / f"step_{s:08d}").mkdir()
    prune(tmp_path, 1, keep=tmp_path / "step_00000002")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 200]
    with pytest.raises(Exception, match="does not exist"):
        point_last(tmp_path, "step_00000100")
    assert not (tmp_path / "last").exists()


# ---------------------------------------------------------------------------- 4: checks before a dir
def test_a_run_failing_its_checks_leaves_no_run_dir(arm_state_ds, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, err = _cli(_ov(tmp_path / "no_such_dataset", run, 4), monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "DataError" in err and "does not exist" in err, err
    code, err = _cli([*_ov(arm_state_ds, run, 4), "task.features.action_dim=5"], monkeypatch, capsys)
    assert code == 2 and "action has 3 dims" in err, err
    assert not run.exists()


# ---------------------------------------------------------------- 3 and 4: resume by the run dir, log
@pytest.mark.slow
def test_resume_with_only_the_run_dir_continues_the_saved_run(arm_state_ds, tmp_path, monkeypatch, capsys):
    run, ref = tmp_path / "run", tmp_path / "ref"
    cli = [python(), "-m", "streamdp.policy.train"]
    first = subprocess.run([*cli, *_ov(arm_state_ds, run, 8, **{"train.log_every": 2, "train.log_interval_s": 0})],
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    hydra_overrides = (run / ".hydra" / "overrides.yaml").read_text()
    # what changes the computation is refused by name, before anything is written
    before = _snapshot(run)
    code, err = _cli([f"train.output_dir={run}", "resume=true", "train.lr=3e-4", "policy.horizon=16"],
                     monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "train.lr 0.001 -> 0.0003" in err and "policy.horizon 12 -> 16" in err, err
    code, err = _cli([f"train.output_dir={run}", "resume=true", "train.steps=6"], monkeypatch, capsys)
    assert code == 2 and "train.steps 8 -> 6" in err, err
    assert _snapshot(run) == before

    # the README's command: only the run dir (plus harmless keys and more steps)
    resumed = subprocess.run([*cli, f"train.output_dir={run}", "resume=true", "train.steps=12", "train.progress=false"],
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / ".hydra" / "overrides.yaml").read_text() == hydra_overrides  # the first command stays recorded
    log = (run / "train.log").read_text()
    assert "resumed from" in log and "train.steps 8 -> 12" in log
    assert "step 4/8 (50.0%)" in log and "step 12/12 (100.0%)" in log  # progress lines: loss, lr, speed, ETA
    line = next(x for x in log.splitlines() if "step 10/12" in x)
    for part in ("| loss ", "| lr ", "steps/s", "samples/s", "ETA "):
        assert part in line, line
    assert sorted(read_metrics(run)) == list(range(1, 13))
    saved = (run / "config.yaml").read_text()
    assert "steps: 12" in saved and f"root: {arm_state_ds}" in saved
    # the same 12 steps uninterrupted (the warm-up lasts 10 steps, so extending the schedule from 8 to 12
    # steps changes no learning rate up to step 8): the resumed run matches it exactly
    train_inprocess(_ov(arm_state_ds, ref, 12, **{"train.log_every": 2}))
    assert read_metrics(run) == read_metrics(ref)


# -------------------------------------------------------------------------------- 2: crash leftovers
def test_resume_after_a_crash_takes_the_newest_complete_checkpoint(arm_state_ds, tmp_path, caplog):
    run, ref = tmp_path / "run", tmp_path / "ref"
    train_inprocess(_ov(arm_state_ds, run, 8, **{"train.keep_last": 3}))  # steps 4, 6, 8
    ckpts = run / "checkpoints"
    # the states a kill -9 (or an older version's crash) can leave behind:
    (ckpts / "step_00000008").rename(ckpts / "gone")  # `last` points at a step dir that does not exist
    (ckpts / "step_00000006" / "training_state" / "optimizer.safetensors").unlink()  # an incomplete one
    half = ckpts / ".step_00000010.tmp-99999-abcdef012345"  # a write cut short
    (half / "pretrained").mkdir(parents=True)
    (half / "pretrained" / "model.safetensors").write_bytes(b"\0" * 100)
    assert not (ckpts / "last").exists() and (ckpts / "last").is_symlink()

    found, notes = find_checkpoint(ckpts)
    assert found == ckpts / "step_00000004"
    assert any("points at step_00000008, which does not exist" in n for n in notes), notes
    assert any("skipping checkpoint at step 6" in n for n in notes), notes

    with caplog.at_level(logging.WARNING, logger="streamdp.train"):
        res = train_inprocess([f"train.output_dir={run}", "resume=true", "train.steps=10"])
    assert res.step == 10
    assert "points at step_00000008, which does not exist" in caplog.text
    assert [s for s, _ in list_checkpoints(ckpts)] == [6, 8, 10] and not half.exists()
    assert (ckpts / "last").resolve().name == "step_00000010"
    for _, p in list_checkpoints(ckpts):
        verify_checkpoint(p)
    # from step 4 on, exactly the run that was never interrupted
    train_inprocess(_ov(arm_state_ds, ref, 10))
    a, b = read_metrics(run), read_metrics(ref)
    assert sorted(a) == list(range(1, 11)) and [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]


# --------------------------------------------------------------------------------- 5: what is inside
def test_a_checkpoint_holds_each_copy_of_the_weights_once(arm_state_ds, tmp_path):
    run = tmp_path / "run"
    train_inprocess(_ov(arm_state_ds, run, 4))
    ck = run / "checkpoints" / "last"
    files = {str(p.relative_to(ck)): p.stat().st_size for p in ck.rglob("*") if p.is_file()}
    assert set(files) == {
        "pretrained/config.json", "pretrained/model.safetensors", "pretrained/stats.safetensors",
        "training_state/model.safetensors", "training_state/ema.json", "training_state/optimizer.safetensors",
        "training_state/optimizer.json", "training_state/scheduler.json", "training_state/rng.safetensors",
        "training_state/rng.json", "training_state/trainer.json",
    }  # fmt: skip
    policy = Policy.from_pretrained(ck / "pretrained")
    weights = 4 * sum(p.numel() for p in policy.model.parameters())  # fp32 bytes of one copy of the parameters
    big = sum(v for k, v in files.items() if k.endswith("model.safetensors") or k.endswith("optimizer.safetensors"))
    assert big < 4.2 * weights  # EMA export + raw weights + two Adam moments, and nothing else of that size
    assert sum(files.values()) < 4.3 * weights
    # resume reads the EMA weights from the export
    st = load_training_state(ck)
    exported = load_file(str(ck / "pretrained" / "model.safetensors"))
    assert st["ema"]["shadow"].keys() == exported.keys()
    assert all(torch.equal(st["ema"]["shadow"][k], exported[k]) for k in exported)
    assert any(not torch.equal(st["model"][k], exported[k]) for k in exported)  # raw != EMA
    # a checkpoint of the older layout (EMA weights also in training_state/ema.safetensors) still resumes
    old = {k: v + 1 for k, v in exported.items()}
    save_file(old, str(ck / "training_state" / "ema.safetensors"))
    verify_checkpoint(ck)
    assert all(torch.equal(load_training_state(ck)["ema"]["shadow"][k], old[k]) for k in old)


def test_stop_at_pauses_on_the_full_schedule_and_resume_finishes_it(arm_state_ds, tmp_path):
    """train.stop_at: a checkpoint at that step, the learning-rate schedule of train.steps; resuming to
    train.steps gives exactly the uninterrupted run."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    extra = {"train.log_every": 1, "train.checkpoint_every": 100, "train.warmup_steps": 2}
    first = train_inprocess(_ov(arm_state_ds, run, 12, **extra, **{"train.stop_at": 5}))
    assert first.step == 5 and (run / "checkpoints" / "step_00000005").is_dir()
    assert sorted(read_metrics(run)) == list(range(1, 6))
    from streamdp.policy.train.cli import load_config, train

    done = train(load_config([f"train.output_dir={run}", "resume=true", "train.stop_at=0"]))
    assert done.step == 12
    train_inprocess(_ov(arm_state_ds, ref, 12, **extra))
    assert read_metrics(run) == read_metrics(ref)
