import numpy as np
import pytest

from streamdp.policy import ConfigError, NonFiniteError, PolicyConfig

from .helpers import tiny_policy


def test_config_validates():
    with pytest.raises(ConfigError, match="raise horizon Tp to >= 17 or lower n_action_steps Ta to <= 7"):
        PolicyConfig(action_dim=2, state_dim=2, horizon=16, n_obs_steps=2, n_action_steps=8, sampler="sdp")
    # the same horizons are fine for full-chunk samplers
    PolicyConfig(action_dim=2, state_dim=2, horizon=16, n_obs_steps=2, n_action_steps=8, sampler="ddim")
    with pytest.raises(ConfigError, match="divisible by 4"):
        PolicyConfig(action_dim=2, state_dim=2, horizon=18, n_action_steps=4)
    with pytest.raises(ConfigError, match="unknown field"):
        PolicyConfig.from_dict({"action_dim": 2, "state_dim": 2, "horizn": 16})
    with pytest.raises(ConfigError, match="image_shape"):
        PolicyConfig(action_dim=2, state_dim=2, camera_names=["front"])
    with pytest.raises(ConfigError, match="num_inference_steps"):
        PolicyConfig(action_dim=2, state_dim=2, num_inference_steps=0)


def test_nonfinite_and_malformed_inputs_rejected():
    pol = tiny_policy()
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        pol.observe({"observation.state": np.array([np.nan, 0.0])})
    with pytest.raises(ValueError, match="has 3 values, policy expects 2"):
        pol.observe({"observation.state": np.zeros(3)})
    with pytest.raises(KeyError, match="observation.state"):
        pol.observe({"state": np.zeros(2)})


def test_out_of_order_stamps_dropped():
    pol = tiny_policy()
    assert pol.observe({"observation.state": np.zeros(2)}, stamp=1.0)
    assert not pol.observe({"observation.state": np.ones(2)}, stamp=1.0)
    assert not pol.observe({"observation.state": np.ones(2)}, stamp=0.5)
    assert pol.dropped_observations == 2


def test_nonfinite_output_never_emitted():
    pol = tiny_policy()
    pol.observe({"observation.state": np.zeros(2)})
    for p in pol.model.denoiser.parameters():
        p.data.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="nothing emitted"):
        pol.denoise()
    assert pol.num_ready == 0


def test_budgeted_denoise_resumes_and_never_emits_partial():
    for sampler, total in (("sdp", 5), ("ddim", 10)):
        pol = tiny_policy(
            sampler=sampler, num_inference_steps=10 if sampler == "ddim" else 16, horizon=16, n_action_steps=5
        )
        pol.observe({"observation.state": np.zeros(2)})
        spent = 0
        while pol.num_ready == 0:
            made = pol.denoise(budget=2)
            assert made <= 2
            spent += made
            assert pol.num_ready in (0, 5)
        assert spent == total
        assert pol.denoise(budget=2) == 0  # nothing more to do until the next observation


def test_image_policy_runs():
    pol = tiny_policy(
        state_dim=2, camera_names=["front"], image_shape=(3, 24, 24), num_inference_steps=8, denoiser="transformer"
    )
    img = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    a = pol.select_action({"observation.state": np.zeros(2), "observation.images.front": img})
    assert a.shape == (2,) and np.isfinite(a).all()
    with pytest.raises(ValueError, match="expected"):
        pol.observe({"observation.state": np.zeros(2), "observation.images.front": img[:20]})


@pytest.mark.parametrize("backbone", ["resnet18", "small"])
def test_image_backbones_run_the_encoder_once_per_observation(backbone, tmp_path):
    """encoder.backbone: the ResNet-18 trunk or the small CNN; either runs once per camera per observation
    (To frames in one batch), round-trips through a checkpoint, and a wrong name is a config error."""
    from streamdp.policy import Policy

    pol = tiny_policy(state_dim=2, camera_names=["front"], image_shape=(3, 32, 32), num_inference_steps=8,
                      denoiser="transformer", encoder={"backbone": backbone})
    enc = pol.model.encoder.image_encoders["front"]
    n_params = sum(p.numel() for p in enc.parameters())
    assert (n_params > 5_000_000) == (backbone == "resnet18")  # ResNet-18: 11 M; small: about 0.1 M
    calls = []
    enc.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for _ in range(3):
        pol.select_action({"observation.state": np.zeros(2), "observation.images.front": img})
    assert calls and all(n == pol.config.n_obs_steps for n in calls)  # one batch of the To frames per call
    inferences = pol.nfe_total
    assert len(calls) <= 3 and inferences > 0
    loaded = Policy.from_pretrained(pol.save_pretrained(tmp_path / "ckpt"))
    assert loaded.config.encoder.backbone == backbone
    with pytest.raises(ConfigError, match="encoder.backbone"):
        tiny_policy(state_dim=2, camera_names=["front"], image_shape=(3, 32, 32), encoder={"backbone": "vit"})


def test_primer_from_state():
    """reset(state) noises the repeated joint state into the buffer: its mean is sqrt(alpha_bar) * state."""
    import torch

    pol = tiny_policy(primer="state", sampler="sdp", num_inference_steps=100)
    target = pol.normalizer.normalize("action", torch.tensor([1.7, -0.4]))  # -> [0.8, -0.4]
    xs = []
    for _ in range(400):
        pol.reset(state=np.array([1.7, -0.4]))
        xs.append(pol.buffer.x[0])
    ab = pol.model.schedule.alpha_bar(pol.buffer.labels()[:1], torch.float64).item()
    assert torch.allclose(torch.stack(xs).mean(0), ab**0.5 * target, atol=0.1)
    pol_zero = tiny_policy(primer="zeros", sampler="sdp", num_inference_steps=100)
    mean0 = torch.stack(
        [(pol_zero.reset(state=np.array([1.7, -0.4])), pol_zero.buffer.x[0])[1] for _ in range(400)]
    ).mean(0)
    assert mean0.abs().max() < 0.1
