"""Diffusion core: guidance arithmetic, loss terms, schedulers, window fusion, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathgen.diffusion.guidance import combine_guidance, combine_outputs, guidance_passes, guided_denoiser
from pathgen.diffusion.losses import (DiffusionTerms, discretized_gaussian_log_likelihood, hybrid_loss, normal_kl,
                                      simple_loss, vlb_term)
from pathgen.diffusion.sampling import seed_for, window_starts, window_weight_1d, windowed_model
from pathgen.diffusion.schedulers import NoiseSchedule, make_scheduler, scheduler_input
from pathgen.errors import PathgenError

# ---------------------------------------------------------------------------------------------------------------
# classifier-free guidance


EPS_U = torch.tensor([[1.0, 2.0, -4.0]])
EPS_C = torch.tensor([[3.0, 5.0, 0.5]])


def test_guidance_scale_zero_is_exactly_unconditional():
    assert torch.equal(combine_guidance(EPS_U, EPS_C, 0.0), EPS_U)
    assert guidance_passes(0) == (True, False)


def test_guidance_scale_one_is_exactly_conditional():
    assert torch.equal(combine_guidance(EPS_U, EPS_C, 1.0), EPS_C)
    assert guidance_passes(1) == (False, True)


def test_guidance_scale_two_extrapolates():
    # eps_u + 2 (eps_c - eps_u) = 2 eps_c - eps_u
    assert torch.equal(combine_guidance(EPS_U, EPS_C, 2.0), torch.tensor([[5.0, 8.0, 5.0]]))
    assert torch.equal(combine_guidance(EPS_U, EPS_C, 0.5), torch.tensor([[2.0, 3.5, -1.75]]))
    assert guidance_passes(2) == (True, True)


def test_guided_outputs_take_variance_from_the_conditional_pass():
    out_u = torch.tensor([[[[1.0]], [[10.0]]]])  # (1, 2, 1, 1): eps channel, variance channel
    out_c = torch.tensor([[[[3.0]], [[20.0]]]])
    g = combine_outputs(out_u, out_c, 2.0, eps_channels=1)
    assert g[0, 0, 0, 0] == 5.0 and g[0, 1, 0, 0] == 20.0
    assert torch.equal(combine_outputs(out_u, None, 0.0, 1), out_u)
    assert torch.equal(combine_outputs(None, out_c, 1.0, 1), out_c)


@pytest.mark.parametrize("scale,expected_batch", [(0.0, 2), (1.0, 2), (2.0, 4), (1.5, 4)])
def test_guided_denoiser_makes_one_call_with_the_right_conditions(scale, expected_batch):
    calls = []

    def model(x, t, cond):  # eps = cond value, variance channel = 100 + cond
        calls.append((x.shape[0], cond.clone()))
        c = cond[:, :1]
        return torch.cat([c.expand_as(x), 100 + c.expand_as(x)], dim=1)

    x = torch.zeros(2, 1, 2, 2)
    cond = torch.full((2, 1, 2, 2), 3.0)
    out = guided_denoiser(model, cond, scale, eps_channels=1)(x, torch.tensor(5))
    assert len(calls) == 1 and calls[0][0] == expected_batch
    # null condition = 0, condition = 3: eps = 0 + s (3 - 0) = 3 s; variance from the conditional pass (103)
    assert torch.allclose(out[:, 0], torch.full((2, 2, 2), 3.0 * scale))
    expected_var = 100.0 if scale == 0.0 else 103.0
    assert torch.allclose(out[:, 1], torch.full((2, 2, 2), expected_var))


# ---------------------------------------------------------------------------------------------------------------
# losses


@pytest.fixture(scope="module")
def terms():
    return DiffusionTerms.from_schedule(NoiseSchedule())


def test_schedule_terms(terms):
    assert terms.num_timesteps == 1000
    assert math.isclose(terms.betas[0], 1e-4, rel_tol=1e-5) and math.isclose(terms.betas[-1], 0.02, rel_tol=1e-5)
    # posterior variance at t=0 is 0; its log is clipped to the next step's
    assert terms.posterior_variance[0] == 0.0
    assert terms.posterior_log_variance_clipped[0] == terms.posterior_log_variance_clipped[1]


def test_normal_kl_values():
    z = torch.zeros(1)
    assert float(normal_kl(z, z, z, z)) == 0.0
    assert math.isclose(float(normal_kl(z + 1, z, z, z)), 0.5, rel_tol=1e-6)
    # KL(N(0, e^1) || N(0, 1)) = 0.5 (e - 1 - 1)
    assert math.isclose(float(normal_kl(z, z + 1, z, z)), 0.5 * (math.e - 2.0), rel_tol=1e-6)


def test_discretized_likelihood_sums_to_one_over_the_bins():
    bins = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    for mean, log_scale in [(0.0, -1.0), (0.7, -3.0), (-0.99, -5.0)]:
        lp = discretized_gaussian_log_likelihood(bins, torch.tensor(mean, dtype=torch.float64),
                                                 torch.tensor(log_scale, dtype=torch.float64))
        assert math.isclose(float(lp.exp().sum()), 1.0, rel_tol=1e-6)


def test_loss_terms_shapes_and_finiteness(terms):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    xt = terms.q_sample(x0, t, noise)
    out = torch.randn(4, 6, 8, 8, generator=g)
    res = hybrid_loss(terms, out, x0, xt, t, noise)
    assert res["loss"].shape == () and torch.isfinite(res["loss"])
    assert res["mse"].shape == (4,) and torch.all(torch.isfinite(res["mse"]))
    assert res["vlb"].shape == (4,) and torch.all(torch.isfinite(res["vlb"])) and torch.all(res["vlb"] >= 0)
    assert torch.allclose(res["mse"], simple_loss(out[:, :3], noise))
    # lambda * T = 0.001 * 1000 = 1: loss = mean(mse + vlb)
    assert torch.allclose(res["loss"], (res["mse"] + res["vlb"]).mean())
    # fixed-variance output: L_simple only
    res3 = hybrid_loss(terms, out[:, :3], x0, xt, t, noise)
    assert torch.all(res3["vlb"] == 0)


def test_vlb_is_zero_for_the_true_posterior_and_trains_only_the_variance(terms):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 300, 999])
    xt = terms.q_sample(x0, t, noise)
    # exact eps and v = -1 (variance = posterior variance): the KL vanishes
    v = torch.full_like(x0, -1.0)
    assert torch.allclose(vlb_term(terms, noise, v, x0, xt, t), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    eps = (noise + 0.3).requires_grad_(True)
    v = torch.zeros_like(x0, requires_grad=True)
    vlb_term(terms, eps, v, x0, xt, t).sum().backward()
    assert eps.grad is None  # stop-gradient on the mean
    assert v.grad is not None and torch.any(v.grad != 0)


# ---------------------------------------------------------------------------------------------------------------
# schedulers


def test_scheduler_factory():
    ddpm = make_scheduler("ddpm")
    assert ddpm.config.variance_type == "learned_range"
    ddpm.set_timesteps(250)
    assert len(ddpm.timesteps) == 250 and int(ddpm.timesteps[0]) == 999 and int(ddpm.timesteps[-1]) == 0
    ddim = make_scheduler("ddim", 1000)
    ddim.set_timesteps(50)
    assert len(ddim.timesteps) == 50 and int(ddim.timesteps[0]) == 999
    dpm = make_scheduler("dpm")
    assert dpm.config.algorithm_type == "dpmsolver++"
    with pytest.raises(PathgenError):
        make_scheduler("euler")
    # DDPM with learned range receives eps + v; DDIM / DPM-Solver++ receive eps only
    out = torch.zeros(1, 6, 2, 2)
    assert scheduler_input(ddpm, out, 3).shape[1] == 6
    assert scheduler_input(ddim, out, 3).shape[1] == 3
    assert scheduler_input(dpm, out, 3).shape[1] == 3


# ---------------------------------------------------------------------------------------------------------------
# windows and seeds


def test_window_starts_cover_the_canvas():
    assert window_starts(16, 16, 4) == [0]
    assert window_starts(40, 16, 4) == [0, 12, 24]
    assert window_starts(30, 16, 8) == [0, 8, 14]
    w = window_weight_1d(16, 12, 40, 4)
    assert np.all(w > 0) and w[5] == 1.0 and w[0] < 0.1 and w[-1] < 0.1


def test_windowed_model_is_exact_for_pixelwise_models():
    def model(x, t, cond):
        return 2.0 * x + cond

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, 28, generator=g)
    cond = torch.randn(2, 3, 40, 28, generator=g)
    fused = windowed_model(model, window=16, overlap=4, max_batch=5)(x, torch.tensor(3), cond)
    assert torch.allclose(fused, model(x, None, cond), atol=1e-6)
    small = torch.randn(1, 3, 16, 16, generator=g)
    assert torch.equal(windowed_model(model, 16, 4)(small, torch.tensor(1), small), 3.0 * small)


def test_sample_seeds_depend_only_on_job_seed_and_index():
    assert seed_for(0, 5) == seed_for(0, 5)
    assert len({seed_for(0, i) for i in range(100)}) == 100
    assert seed_for(0, 5) != seed_for(1, 5) != seed_for(0, 5, stream=2)


@pytest.mark.parametrize("scheduler,steps", [("ddpm", 50), ("ddim", 20), ("dpm", 10)])
def test_every_sampler_recovers_the_data_from_an_exact_denoiser(scheduler, steps):
    """With the exact ε for a known x₀ (and any variance channel), every sampler must end at x₀: checks the
    timestep wiring, the ε / variance split and each scheduler's update, in the requested number of calls."""
    from pathgen.diffusion.sampling import generators_for, sample_loop

    terms = DiffusionTerms.from_schedule(NoiseSchedule())
    alphas = torch.from_numpy(terms.alphas_cumprod).float()
    x0 = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    calls = []

    def exact(x, t):
        calls.append(int(t))
        a = alphas[int(t)]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    x = sample_loop(exact, make_scheduler(scheduler), (3, 6, 6), steps, generators_for([1, 2]))
    assert len(calls) == steps and calls[0] == 999 and calls == sorted(calls, reverse=True)
    assert torch.allclose(x, x0, atol=1e-4)
