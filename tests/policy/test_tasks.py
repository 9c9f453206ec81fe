"""Task conditioning: a learned embedding per task string (PolicyConfig.tasks), chosen by obs["task"].

Fast: tiny policies only. The LIBERO suite end to end (collector, merge, training, suite evaluation) is in
tests/sim/test_libero_suite.py.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from streamdp.policy import ConfigError, Policy, UnknownTaskError
from streamdp.policy.encoders import STATE_KEY, TASK_INDEX_KEY
from streamdp.sim import bundled_checkpoint

from .helpers import tiny_policy

TASKS = ["pick up the soup and place it in the basket", "pick up the milk and place it in the basket"]


def _randomised(policy: Policy) -> Policy:
    g = torch.Generator().manual_seed(1)
    for p in policy.model.parameters():  # non-trivial weights (the embedding starts random anyway)
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy


def _chunk(policy: Policy, task: str | None, seed: int = 0) -> np.ndarray:
    policy.generator.manual_seed(seed)
    policy.reset()
    obs = {STATE_KEY: np.array([0.3, -0.2])}
    if task is not None:
        obs["task"] = task
    return policy.predict_action_chunk(obs)


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_the_task_embedding_conditions_both_denoisers(denoiser):
    pol = _randomised(tiny_policy(denoiser=denoiser, tasks=TASKS))
    assert pol.model.encoder.task_embed.num_embeddings == 2
    assert pol.model.encoder.out_dim == pol.config.encoder.state_hidden + pol.config.encoder.task_embed_dim
    a0, a0_again, a1 = _chunk(pol, TASKS[0]), _chunk(pol, TASKS[0]), _chunk(pol, TASKS[1])
    np.testing.assert_array_equal(a0, a0_again)  # same task, same noise: same actions
    assert np.abs(a0 - a1).max() > 1e-4  # same noise, other task: other actions
    # the condition differs only in the task features: the state features are the same
    conds = []
    for task in TASKS:
        pol.reset()
        pol.observe({STATE_KEY: np.array([0.3, -0.2]), "task": [task]})  # a one-string list (LeRobot envs)
        conds.append(pol.condition())
    h = pol.config.encoder.state_hidden
    torch.testing.assert_close(conds[0][..., :h], conds[1][..., :h], rtol=0, atol=0)
    assert not torch.equal(conds[0][..., h:], conds[1][..., h:])


def test_the_task_gradient_reaches_the_embedding():
    pol = tiny_policy(denoiser="transformer", tasks=TASKS)
    model = pol.model.train()
    obs = {STATE_KEY: torch.zeros(4, 2, 2), TASK_INDEX_KEY: torch.tensor([[0, 0], [1, 1], [0, 0], [1, 1]])}
    total, count = model.loss_terms(obs, torch.zeros(4, 16, 2), generator=torch.Generator().manual_seed(0))
    (total / count).backward()
    grad = model.encoder.task_embed.weight.grad
    assert grad is not None and bool((grad.abs().sum(dim=1) > 0).all())  # both rows were used


def test_unknown_or_missing_task_is_a_one_line_error():
    pol = tiny_policy(tasks=TASKS)
    with pytest.raises(UnknownTaskError) as e:
        _chunk(pol, "pick up the ketchup and place it in the basket")
    msg = str(e.value)
    assert "\n" not in msg and "'pick up the ketchup" in msg
    assert all(repr(t) in msg for t in TASKS)  # it names every known task
    assert isinstance(e.value, ConfigError)  # a user error: one line and exit code 2 in the jobs
    with pytest.raises(KeyError, match="lacks 'task'"):
        _chunk(pol, None)
    with pytest.raises(ValueError, match="must be a string"):
        pol.observe({STATE_KEY: np.array([0.3, -0.2]), "task": 3})


def test_config_checks_the_task_list():
    with pytest.raises(ConfigError, match="distinct"):
        tiny_policy(tasks=["a", "a"])
    with pytest.raises(ConfigError, match="distinct"):
        tiny_policy(tasks=["a", ""])
    with pytest.raises(ConfigError, match="task_embed_dim"):
        tiny_policy(tasks=["a", "b"], encoder={"task_embed_dim": 0})


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_checkpoint_round_trip_keeps_the_task_list(tmp_path, denoiser):
    pol = _randomised(tiny_policy(denoiser=denoiser, tasks=TASKS, encoder={"task_embed_dim": 8}))
    path = pol.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    assert meta["policy"]["tasks"] == TASKS and meta["policy"]["encoder"]["task_embed_dim"] == 8
    loaded = Policy.from_pretrained(path)
    assert loaded.config.tasks == TASKS and loaded.config.task_index(TASKS[1]) == 1
    a, b = pol.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert b["encoder.task_embed.weight"].shape == (2, 8)
    for task in TASKS:
        np.testing.assert_array_equal(_chunk(pol, task), _chunk(loaded, task))


@pytest.mark.parametrize("name", ["arm_reach_dynamic", "pusht"])
def test_checkpoints_without_tasks_load_and_behave_as_before(name, tmp_path):
    """A checkpoint written before task conditioning (a bundled one with the key removed from its config):
    no task module, the condition is exactly the state encoder's output (as before), and an obs["task"]
    changes nothing."""
    path = tmp_path / name
    shutil.copytree(bundled_checkpoint(name), path)
    doc = json.loads((path / "config.json").read_text())
    doc["policy"].pop("tasks", None)
    (path / "config.json").write_text(json.dumps(doc))
    pol = Policy.from_pretrained(path)  # strict: every weight present, none unexpected
    assert pol.config.tasks == [] and pol.model.encoder.task_embed is None
    assert not any("task" in k for k in pol.model.state_dict())
    state = np.linspace(-0.5, 0.5, pol.config.state_dim)
    pol.reset()
    pol.observe({STATE_KEY: state})
    norm = pol.normalizer.normalize(STATE_KEY, torch.as_tensor(state, dtype=torch.float32))
    with torch.no_grad():
        expected = pol.model.encoder.state_mlp(norm.expand(1, pol.config.n_obs_steps, -1))
    torch.testing.assert_close(pol.condition(), expected, rtol=0, atol=0)
    plain, with_task = Policy.from_pretrained(path, seed=5), Policy.from_pretrained(path, seed=5)
    obs = {STATE_KEY: state}
    plain.reset(state=state)
    with_task.reset(state=state)
    for _ in range(2 * pol.config.n_action_steps):
        np.testing.assert_array_equal(plain.select_action(obs), with_task.select_action({**obs, "task": "anything"}))
