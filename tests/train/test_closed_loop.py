"""Closed-loop evaluation during training (issue 14): evaluation rows at the scheduled steps, the best
checkpoint kept (and never pruned), the training curve, resume continuing the schedule, training numbers
unchanged by evaluation, and no evaluation (one line in the log) for a dataset of no simulated task."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streamdp.policy import Policy
from streamdp.policy.train.checkpoints import list_checkpoints, prune
from streamdp.policy.train.closed_loop import Score, SimTask, sim_task
from streamdp.policy.train.data import DatasetInfo

from .helpers import make_lerobot, read_metrics, tiny_overrides, train_inprocess

# short episodes: what is tested is the schedule and the bookkeeping, not the policy's skill
EVAL = {"eval.episodes": 2, "eval.max_steps": 30}


def _ov(root, run, steps, **kw):
    return tiny_overrides(root, run, steps=steps, batch=8, **{**EVAL, **kw})


def _evals(run: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval" in r]
    assert len({r["step"] for r in evals}) == len(evals), "an evaluation was recorded twice"
    return {r["step"]: r["eval"] for r in evals}


def _expected_best(evals: dict[int, dict]) -> int:
    """The rule, written out: success rate, then coverage, else the negative final distance; ties: later."""
    best = None
    for step in sorted(evals):
        e = evals[step]
        tie = e["mean_max_coverage"] if e["mean_max_coverage"] is not None else -e["mean_final_distance"]
        if best is None or (e["success_rate"], tie) >= best[1]:
            best = (step, (e["success_rate"], tie))
    assert best is not None
    return best[0]


def _steps(run: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(run / "checkpoints")]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_training_evaluates_keeps_the_best_and_plots(arm_state_ds, tmp_path):
    run = tmp_path / "run"
    res = train_inprocess(_ov(arm_state_ds, run, 8, **{"train.checkpoint_every": 4, "train.keep_last": 1,
                                                       "eval.every": 3}))  # fmt: skip
    evals = _evals(run)
    assert sorted(evals) == [3, 6, 8]  # every eval.every steps and at the last step
    for e in evals.values():
        assert e["episodes"] == 2 and 0.0 <= e["success_rate"] <= 1.0 and e["sampler"].startswith("SDP")
        assert e["mean_final_distance"] is not None and e["mean_max_coverage"] is None  # the arm reports a distance
    assert sorted(read_metrics(run)) == list(range(1, 9))  # loss rows as before

    best_step = _expected_best(evals)
    best = run / "checkpoints" / "best"
    assert best.is_symlink() and best.resolve().name == f"step_{best_step:08d}"
    assert res.best is not None and res.best.name == best.resolve().name and res.best_score.step == best_step
    assert [s for s, e in evals.items() if e["best"]][-1] == best_step  # the rows flag each new best
    # keep_last=1 keeps the newest checkpoint and the best one, nothing else
    assert _steps(run) == sorted({8, best_step})
    result = json.loads((best / "eval" / "result.json").read_text())  # the evaluator's own record
    assert result["episodes"] == 2 and result["seeds"] == [10000, 10001] and result["task"] == "arm_reach_dynamic"
    assert result["runs"][0]["successes"] == round(evals[best_step]["success_rate"] * 2)
    policy = Policy.from_pretrained(best / "pretrained")
    assert policy.extras["train"]["step"] == best_step
    assert _is_png(run / "training_curve.png")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/success_rate")] == [3, 6, 8]
    assert [e.step for e in acc.Scalars("eval/mean_final_distance")] == [3, 6, 8]


def test_prune_never_deletes_the_best_checkpoint(tmp_path):
    for s in (2, 100, 200, 300):
        (tmp_path / f"step_{s:08d}").mkdir()
    (tmp_path / "best").symlink_to("step_00000002")
    prune(tmp_path, 1, keep=tmp_path / "step_00000300")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 300]


def test_resume_continues_the_evaluation_schedule(arm_state_ds, tmp_path):
    run = tmp_path / "run"
    train_inprocess(_ov(arm_state_ds, run, 6, **{"eval.every": 3}))
    assert sorted(_evals(run)) == [3, 6]
    # a kill between writing checkpoint 6 and evaluating it: no eval/ in it, no row for it
    ckpt6 = run / "checkpoints" / "step_00000006"
    for p in sorted((ckpt6 / "eval").iterdir()):
        p.unlink()
    (ckpt6 / "eval").rmdir()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if not ('"eval"' in x and '"step": 6' in x)))
    (run / "checkpoints" / "best").unlink()  # and `best` lost with it: rebuilt from what the checkpoints hold

    res = train_inprocess([f"train.output_dir={run}", "resume=true", "train.steps=10", "eval.episodes=1"])
    assert res.step == 10
    evals = _evals(run)
    assert sorted(evals) == [3, 6, 9, 10]  # 6 evaluated on resume, then the schedule goes on
    assert [evals[s]["episodes"] for s in (3, 6, 9, 10)] == [2, 1, 1, 1]  # eval.* may change on resume
    assert (ckpt6 / "eval" / "result.json").is_file()
    assert (run / "checkpoints" / "best").resolve().name == f"step_{_expected_best(evals):08d}"
    assert sorted(read_metrics(run)) == list(range(1, 11))
    assert _is_png(run / "training_curve.png")


def test_evaluation_leaves_the_training_numbers_unchanged(arm_state_ds, tmp_path):
    # a transformer with dropout draws from torch's global generator every step, which the evaluator reseeds
    net = ["policy=sdp_transformer", "policy.transformer.d_model=32", "policy.transformer.n_heads=2",
           "policy.transformer.n_layers=1", "policy.transformer.dropout=0.1"]  # fmt: skip
    on, off = tmp_path / "on", tmp_path / "off"
    train_inprocess([*_ov(arm_state_ds, on, 6, **{"eval.every": 2, "eval.episodes": 1}), *net])
    train_inprocess([*_ov(arm_state_ds, off, 6), *net])
    assert sorted(_evals(on)) == [2, 4, 6] and not _evals(off)
    a, b = read_metrics(on), read_metrics(off)
    assert sorted(a) == list(range(1, 7)) and a == b
    for name in ("pretrained/model", "training_state/model", "training_state/optimizer"):
        x = load_file(str(on / "checkpoints" / "last" / f"{name}.safetensors"))
        y = load_file(str(off / "checkpoints" / "last" / f"{name}.safetensors"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def test_a_dataset_of_no_simulated_task_trains_without_evaluation(tmp_path, caplog):
    root = make_lerobot(tmp_path / "real", [30, 30], state_dim=2, action_dim=2)  # records no robot_type
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="streamdp.train"):
        res = train_inprocess([*_ov(root, run, 4, **{"eval.every": 2}), "task=generic"])
    assert res.step == 4 and res.best is None
    notes = [r.getMessage() for r in caplog.records if "closed-loop evaluation off" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "'generic' is not a simulated task" in notes[0], notes
    assert not _evals(run) and not (run / "checkpoints" / "best").exists()
    assert _is_png(run / "training_curve.png")  # the loss alone


def test_a_failing_evaluation_does_not_stop_training(arm_state_ds, tmp_path, caplog, monkeypatch):
    import streamdp.sim.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("EGL: no display\nsecond line")

    monkeypatch.setattr(streamdp.sim.evaluate, "evaluate", broken)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="streamdp.train"):
        res = train_inprocess(_ov(arm_state_ds, run, 6, **{"eval.every": 2}))
    assert res.step == 6 and res.best is None and not _evals(run)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["step 2: closed-loop evaluation failed, and is off for the rest of this run: "
                      "RuntimeError: EGL: no display second line"], errors  # fmt: skip
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4, 6]  # training and checkpoints went on


def _info(**kw) -> DatasetInfo:
    base = dict(source="d", fps=20.0, state_dim=8, action_dim=3, state_names=[], action_names=[], camera_names=[],
                image_shape=None, num_episodes=1, num_frames=10, episode_lengths=[10], robot_type="planar_arm_3dof",
                tasks=["Reach the red target with the arm tip; the target jumps once mid-episode."])  # fmt: skip
    return DatasetInfo(**{**base, **kw})


ARM = {"name": "arm_reach_dynamic", "obs_mode": "state", "kwargs": {}}


@pytest.mark.parametrize(
    ("task", "info", "why"),
    [
        (ARM, _info(robot_type=None), "records no robot_type"),  # a real robot's dataset, a converted one
        (ARM, _info(robot_type="ur5e"), "recorded on robot_type 'ur5e'"),
        (ARM, _info(tasks=["fold the towel"]), "holds the tasks ['fold the towel']"),
        (ARM, _info(fps=10.0), "fps 20.0 (task) != 10.0 (dataset)"),
        ({**ARM, "obs_mode": "image"}, _info(state_dim=6, camera_names=["top"], image_shape=(3, 32, 32)),
         "image shape (C, H, W) (3, 96, 96) (task) != (3, 32, 32) (dataset)"),
        ({"name": "generic"}, _info(), "'generic' is not a simulated task"),
    ],
)  # fmt: skip
def test_which_datasets_are_evaluated(task, info, why):
    sim, note = sim_task(task, info)
    assert sim is None and note.startswith("closed-loop evaluation off: ") and why in note, note


def test_the_collected_dataset_is_evaluated_in_its_task():
    sim, _ = sim_task(ARM, _info())
    assert sim == SimTask("arm_reach_dynamic", "state", {})
    image = {**ARM, "obs_mode": "image", "kwargs": {"image_size": 32}}
    sim, _ = sim_task(image, _info(state_dim=6, camera_names=["top"], image_shape=(3, 32, 32)))
    assert sim == SimTask("arm_reach_dynamic", "image", {"image_size": 32})


def test_the_ranking_rule():
    def score(step, rate, cov=None, dist=None):
        return Score(step, rate, int(rate * 10), 10, cov, dist, "SDP", 1.0)

    assert score(2, 0.2, cov=0.1).beats(score(1, 0.1, cov=0.9))  # success first
    assert score(2, 0.1, cov=0.9).beats(score(1, 0.1, cov=0.5))  # then coverage
    assert not score(2, 0.1, cov=0.4).beats(score(1, 0.1, cov=0.5))
    assert score(2, 0.0, dist=0.1).beats(score(1, 0.0, dist=0.2))  # or a smaller final distance
    assert not score(2, 0.0, dist=0.3).beats(score(1, 0.0, dist=0.2))
    assert score(2, 0.5, cov=0.5).beats(score(1, 0.5, cov=0.5))  # a tie goes to the later checkpoint
    assert score(1, 0.0).beats(None)
