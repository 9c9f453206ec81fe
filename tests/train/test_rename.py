"""Feature renaming (issue 16, item 9): a policy trained on a dataset in the public lerobot/pusht layout (camera
``observation.image``) is evaluable in the PushT simulator, whose camera is ``top``. Training reads dataset keys
under the task card's names (``dataset.rename_map``) and records the map in the checkpoint; evaluation feeds a
task's keys to a policy that names them otherwise (``rename_map``)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import re  # noqa: E402
import shlex  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from streamdp.policy import Policy  # noqa: E402
from streamdp.policy.checkpoint import CheckpointMismatchError  # noqa: E402
from streamdp.policy.config import ConfigError  # noqa: E402
from streamdp.policy.train.data import DataError  # noqa: E402

from .helpers import make_public_pusht, tiny_overrides, train_inprocess  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_args(pattern: str, **replace: str) -> list[str]:
    """The key=value arguments of the README command line matching `pattern`, with the given keys replaced."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    line = next((ln for ln in text.splitlines() if re.search(pattern, ln)), None)
    assert line is not None, f"README has no command matching {pattern!r}"
    args = shlex.split(line.split(" #")[0])[1:]
    return [f"{k}={replace[k]}" if k in replace else a for a in args for k in [a.split("=")[0]]]


@pytest.fixture(scope="module")
def public_pusht(tmp_path_factory):
    return make_public_pusht(tmp_path_factory.mktemp("data") / "pusht_public", lengths=(14, 12))


def _train(root, run, *extra):
    return train_inprocess([*tiny_overrides(root, run, steps=3, batch=4), "train.checkpoint_every=3", *extra])


def test_the_pusht_card_names_the_rename_that_reads_a_public_layout_dataset(public_pusht, tmp_path):
    with pytest.raises(DataError, match=r"no feature 'observation.images.top'.*"
                                        r"dataset.rename_map=\{observation.image:observation.images.top\}"):
        _train(public_pusht, tmp_path / "run", "task=pusht_image")
    assert not (tmp_path / "run").exists()


def test_rename_map_must_name_a_key_the_card_reads(public_pusht, tmp_path):
    with pytest.raises(ConfigError, match=r"onto keys the task card does not read"):
        _train(public_pusht, tmp_path / "run", "task=pusht_image",
               "dataset.rename_map={observation.image: observation.images.front}")
    with pytest.raises(ConfigError, match=r"several keys onto"):
        _train(public_pusht, tmp_path / "run", "task=pusht_image",
               "dataset.rename_map={observation.image: observation.images.top, x: observation.images.top}")


def test_trained_on_the_public_layout_evaluates_in_the_pusht_sim(public_pusht, tmp_path):
    """The README's commands: train with dataset.rename_map, then evaluate in PushT with no option at all."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from streamdp.sim.evaluate import load_config, run

    train_args = readme_args(r"streamdp-train .*dataset.rename_map=", **{"dataset.root": str(public_pusht),
                                                                          "train.output_dir": str(tmp_path / "run")})
    res = _train(public_pusht, tmp_path / "run", *train_args)
    ckpt = res.run_dir / "checkpoints" / "last" / "pretrained"
    policy = Policy.from_pretrained(ckpt)
    c = policy.config
    assert c.camera_names == ["top"] and c.image_shape == (3, 96, 96) and (c.state_dim, c.action_dim) == (2, 2)
    assert c.rename_map == {"observation.image": "observation.images.top"}  # recorded in config.json

    # the checkpoint reads a frame of the dataset it was trained on under the dataset's own names (calibration)
    frame = LeRobotDataset("lerobot/pusht", root=public_pusht)[3]
    obs = {k: v.numpy() for k, v in frame.items() if k in ("observation.state", "observation.image")}
    policy.reset(state=obs["observation.state"])
    assert np.isfinite(policy.select_action(obs)).all()

    # ... and acts in the PushT simulator, whose camera is `top`, with no option at all
    eval_args = readme_args(r"streamdp-eval checkpoint=runs/pusht_public", checkpoint=str(ckpt), episodes="1")
    r = run(load_config([*eval_args, "max_steps=6", "progress=false", f"out={tmp_path / 'eval'}"])).run
    assert r.episodes[0].steps == 6 and r.episodes[0].error is None
    assert r.policy["rename_map"] == {"observation.image": "observation.images.top"}


def test_eval_rename_map_feeds_the_sim_camera_to_a_policy_that_names_it_otherwise(tmp_path):
    """A checkpoint whose camera is `image` (trained with the generic card on observation.image) in PushT."""
    from streamdp.policy.config import UnetConfig
    from streamdp.sim.evaluate import evaluate, load_config, run
    from streamdp.sim.expert_policy import policy_config_for

    small = UnetConfig(down_dims=(16, 32), step_embed_dim=16, cond_dim=16)
    cfg = policy_config_for("pusht", "image", unet=small, num_inference_steps=4).replace(camera_names=["image"])
    stats = {k: {"min": np.zeros(2), "max": np.full(2, 512.0), "mean": np.full(2, 256.0), "std": np.ones(2)}
             for k in ("action", "observation.state")}
    ckpt = tmp_path / "ckpt"
    Policy(cfg, stats=stats).save_pretrained(ckpt)

    want = r"cameras \['top'\] \(task\) != \['image'\].*rename_map=\{observation.images.top:observation.images.image\}"
    with pytest.raises(CheckpointMismatchError, match=want):
        evaluate(ckpt, "pusht", episodes=1, max_steps=4)
    args = readme_args(r"streamdp-eval .*rename_map=", checkpoint=str(ckpt))
    c = load_config([*args, "episodes=1", "max_steps=4", "progress=false", f"out={tmp_path / 'eval'}"])
    result = run(c)
    assert result.run.episodes[0].steps == 4 and result.run.episodes[0].error is None
    assert result.run.policy["rename_map"] == {"observation.images.top": "observation.images.image"}
