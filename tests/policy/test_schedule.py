import pytest
import torch

from streamdp.policy.schedule import CLEAN, NoiseSchedule, ScheduleConfig, sampler_grid


@pytest.fixture
def sched():
    return NoiseSchedule(ScheduleConfig(num_train_steps=100, clip_sample=False))


def test_cosine_schedule_is_monotone_and_bounded(sched):
    ab = sched.alpha_bar(torch.arange(-1, 100), torch.float64)
    assert ab[0] == 1.0
    assert torch.all(ab[1:] < ab[:-1])
    assert 0 < ab[-1] < 1e-2


def test_per_slot_step_equals_scalar_step(sched):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    for mode in ("ddpm", "ddim"):
        per_slot = sched.step(x, eps, torch.full((3, 7), 40), torch.full((3, 7), 37), mode=mode, noise=noise)
        scalar = sched.step(x, eps, torch.tensor(40), torch.tensor(37), mode=mode, noise=noise)
        assert torch.equal(per_slot, scalar)
        # and slot-by-slot with mixed labels equals stepping each slot on its own
        k = torch.randint(1, 100, (3, 7), generator=g)
        kp = (k - torch.randint(1, 5, (3, 7), generator=g)).clamp_min(-1)
        mixed = sched.step(x, eps, k, kp, mode=mode, noise=noise)
        for b in range(3):
            for i in range(7):
                one = sched.step(
                    x[b : b + 1, i : i + 1],
                    eps[b : b + 1, i : i + 1],
                    k[b, i],
                    kp[b, i],
                    mode=mode,
                    noise=noise[b : b + 1, i : i + 1],
                )
                assert torch.allclose(mixed[b, i], one[0, 0])


def test_adjacent_posterior_matches_ddpm_formula(sched):
    t = 50
    betas = sched.betas
    ab = sched.alpha_bar(torch.tensor([t, t - 1]), torch.float64)
    x0, xt = torch.randn(1, 1, 4, dtype=torch.float64), torch.randn(1, 1, 4, dtype=torch.float64)
    mean, var = sched.posterior(xt, x0, torch.tensor([[t]]), torch.tensor([[t - 1]]))
    beta = betas[t]
    exp_mean = (ab[1].sqrt() * beta / (1 - ab[0])) * x0 + ((1 - beta).sqrt() * (1 - ab[1]) / (1 - ab[0])) * xt
    exp_var = beta * (1 - ab[1]) / (1 - ab[0])
    assert torch.allclose(mean, exp_mean) and torch.allclose(var, exp_var.expand_as(var))


@pytest.mark.parametrize("k,kp", [(60, 45), (99, 0), (10, -1), (30, 29)])
def test_nonadjacent_posterior_equals_composition(sched, k, kp):
    """Chaining adjacent posteriors k -> k-1 -> ... -> kp (x0 fixed) gives the same Gaussian, in float64."""
    x0, xk = torch.randn(1, 1, 3, dtype=torch.float64), torch.randn(1, 1, 3, dtype=torch.float64)
    # x_{j-1} = a_j x0 + b_j x_j + sigma_j z  => track mean and variance of the chain.
    mean, var = xk.clone(), torch.zeros(1, 1, 1, dtype=torch.float64)
    for j in range(k, kp, -1):
        jm = torch.tensor([[j - 1]])
        ones = torch.ones_like(xk)
        a_mean, sig2 = sched.posterior(torch.zeros_like(xk), ones, torch.tensor([[j]]), jm)  # coefficient of x0
        b_mean, _ = sched.posterior(ones, torch.zeros_like(xk), torch.tensor([[j]]), jm)  # coefficient of x_j
        mean = a_mean * x0 + b_mean * mean
        var = b_mean[..., :1] ** 2 * var + sig2
    direct_mean, direct_var = sched.posterior(xk, x0, torch.tensor([[k]]), torch.tensor([[kp]]))
    assert torch.allclose(direct_mean, mean, atol=1e-10)
    assert torch.allclose(direct_var, var.expand_as(direct_var), atol=1e-10)


def test_clean_slots_untouched_and_add_noise_identity(sched):
    x = torch.randn(2, 4, 3)
    eps = torch.randn(2, 4, 3)
    k = torch.tensor([[CLEAN, 5, CLEAN, 9], [3, CLEAN, 2, 1]])
    kp = torch.where(k < 0, k, k - 1)
    out = sched.step(x, eps, k, kp)
    assert torch.equal(out[k < 0], x[k < 0])
    assert not torch.allclose(out[k >= 0], x[k >= 0])
    assert torch.equal(sched.add_noise(x, eps, torch.full((2, 4), CLEAN)), x)


def test_step_rejects_non_decreasing_labels(sched):
    x = torch.randn(1, 2, 2)
    with pytest.raises(ValueError, match="k_prev < k"):
        sched.step(x, x, torch.tensor([[5, 5]]), torch.tensor([[5, 4]]))
    with pytest.raises(ValueError, match="noise labels must lie"):
        sched.alpha_bar(torch.tensor([100]))


def test_ddim_step_recovers_x0_exactly(sched):
    """With the true noise, a deterministic jump to clean returns the original sample."""
    x0 = torch.rand(1, 6, 2, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(1, 6, 2, dtype=torch.float64)
    k = torch.full((1, 6), 70)
    xk = sched.add_noise(x0, eps, k)
    out = sched.step(xk, eps, k, torch.full((1, 6), CLEAN), mode="ddim")
    assert torch.allclose(out, x0, atol=1e-9)


def test_sampler_grid():
    assert sampler_grid(100, 100) == list(range(99, -1, -1))
    g = sampler_grid(100, 10)
    assert len(g) == 10 and g[0] == 99 and g == sorted(g, reverse=True) and len(set(g)) == 10
    assert len(set(sampler_grid(100, 16))) == 16
    with pytest.raises(ValueError):
        sampler_grid(100, 0)
