"""streamdp-sim-measure on the job CLI, and the two-mode arc task as a registered task."""

from __future__ import annotations

import numpy as np
import pytest

from streamdp.sim import list_tasks, make_expert, make_task, task_spec
from streamdp.sim.measure import load_config, main


def test_measure_keys_compose_and_run(capsys):
    cfg = load_config(["tasks=arc", "episodes=2", "libero_tasks=libero_object:1,libero_spatial:2"])
    assert cfg.tasks == ["arc"] and cfg.episodes == 2 and cfg.seed == 1000
    assert cfg.libero_tasks == ["libero_object:1", "libero_spatial:2"]
    assert main(["tasks=arc", "episodes=3"]) == 0
    assert "success   3/3" in capsys.readouterr().out  # the arc expert always follows an arc
    assert main(["episodes=many"]) == 2 and "episodes" in capsys.readouterr().err
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(k in text for k in ("tasks=", "libero_tasks=", "libero_episodes="))


def test_arc_task_is_two_modal_and_scored():
    assert "arc" in list_tasks()
    spec = task_spec("arc")
    assert (spec.state_dim, spec.action_dim, spec.fps) == (2, 2, 10)
    with pytest.raises(ValueError, match="no cameras"):
        task_spec("arc", "image")
    env = make_task("arc")
    expert = make_expert("arc", env)
    signs = set()
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        done, info = False, {}
        while not done:
            obs, _, done, _, info = env.step(expert.act(obs, env))
        assert info["is_success"]
        signs.add(env.sign)
    assert signs == {1.0, -1.0}  # both arcs, chosen by the seed
    env.reset(seed=0)
    for t in range(1, 33):  # the average of the two arcs: straight through y = 0, never a success
        _, _, done, _, info = env.step(np.array([t / 32, 0.0], np.float32))
    assert done and not info["is_success"]
