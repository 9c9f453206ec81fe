"""One CLI convention for jobs (streamdp.policy.cli): --help lists every key, user mistakes are one line
with exit code 2, --debug shows the traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamdp.policy.calibration import CalibrateBACConfig, CalibrateRTIConfig, bac_main, rti_main
from streamdp.policy.cli import describe
from streamdp.policy.train.cli import main as train_main
from streamdp.policy.train.config import TrainJobConfig


@pytest.mark.parametrize(
    "main,schema", [(rti_main, CalibrateRTIConfig), (bac_main, CalibrateBACConfig), (train_main, TrainJobConfig)]
)
def test_help_lists_every_key_with_its_default(main, schema, capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for key, default, _ in describe(schema):
        assert f"  {key}={default}" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["checkpoint=/nonexistent", "dataset=x.npz"], "checkpoint /nonexistent is not a directory"),
        (["checkpoint=/x", "dataset=y", "max_obs=many"], "max_obs"),
        (["checkpoint=/x", "dataset=y", "no_such_key=1"], "no_such_key"),
        (["dataset=y"], "checkpoint"),
        (["positional"], "expected key=value"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, needle, capsys):
    assert rti_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("streamdp-calibrate-rti: ")


def test_train_mistakes_are_one_line_exit_2_and_debug_shows_the_traceback(tmp_path):
    run = [sys.executable, "-m", "streamdp.policy.train", f"train.output_dir={tmp_path / 'run'}"]
    r = subprocess.run([*run, "train.steps=abc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "train.steps" in r.stderr and not (tmp_path / "run").exists()  # refused before any run dir
    r = subprocess.run([*run, "train.steps=abc", "--debug"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_bac_on_a_unet_checkpoint_names_the_preset_to_train(tmp_path, capsys):
    from streamdp.policy.calibration import save_observations

    from ..accel.util import obs_stream, perturb
    from .helpers import tiny_policy

    ckpt = perturb(tiny_policy(sampler="sdp", denoiser="unet")).save_pretrained(tmp_path / "ckpt")
    data = save_observations(tmp_path / "obs.npz", [obs_stream(9)])
    assert bac_main([f"checkpoint={ckpt}", f"dataset={data}", "max_obs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy=sdp_transformer" in err
