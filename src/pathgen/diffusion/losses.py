"""Training objective: the hybrid loss of improved DDPM, ``L_simple + λ·L_vlb`` with learned-range variance.

Terms (Nichol & Dhariwal 2021; NASDM eqs 5.27–5.30 with the errata of METHODS.md §8):

* ``L_simple = ‖ε − ε_θ(x_t, y, t)‖²``, the squared error averaged over pixels and channels;
* the model's variance ``Σ_θ = exp(v·log β_t + (1 − v)·log β̃_t)`` with ``v = (out + 1)/2`` from the second half
  of the output channels and ``log β̃_t`` clipped at the first step (β̃ of step 1 is 0; its log is replaced by
  step 2's);
* ``L_t = D_KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t, y))`` for ``t > 1`` and the discretised-Gaussian
  decoder NLL ``−log p_θ(x_0 | x_1, y)`` (bins of width 2/255 on [−1, 1], open-ended at ±1) for ``t = 1``, both in
  bits per dimension. The mean of ``p_θ`` is computed from a **stop-gradient** ε, so ``L_vlb`` trains only the
  variance and ``L_simple`` alone trains the mean.

Weighting: the full bound is ``L_vlb = Σ_t L_t = T·E_t[L_t]``; with uniform ``t`` its unbiased one-sample estimate
is ``T·L_t``, so the loss returned is ``L_simple + λ·T·L_t``. With NASDM's λ = 0.001 and T = 1000 this is exactly
``L_simple + L_t``, the reference code's ``loss = mse + vb`` (``rescale_learned_sigmas=False``).

Timesteps are 0-based indices into the schedule (index 0 is step 1, the decoder term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

LAMBDA_VLB = 1e-3
_LOG2 = math.log(2.0)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
              ) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2))`` in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        bin_width: float = 2.0 / 255.0) -> torch.Tensor:
    """Elementwise log-probability (nats) of ``x`` in [−1, 1] under a Gaussian discretised into bins.

    Parameters
    ----------
    x : tensor
        Data on the bin centres of [−1, 1] (8-bit images: ``x = 2·k/255 − 1``).
    mean, log_scale : tensors broadcastable to ``x``
        Gaussian mean and log standard deviation.
    bin_width : float
        Bin width; the first and last bins extend to −∞ and +∞.
    """
    half = bin_width / 2.0
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centred + half)
    lower = inv_std * (centred - half)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log(Φ(upper) − Φ(lower)) without cancellation: Φ(u) − Φ(l) = Φ(−l) − Φ(−u).
    mid = torch.where(lower > 0, torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
                      torch.special.ndtr(upper) - torch.special.ndtr(lower))
    log_mid = torch.log(mid.clamp(min=1e-12))
    edge = 1.0 - half / 2.0  # inside the first/last bin
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mid))


@dataclass
class DiffusionTerms:
    """Per-timestep constants of a noise schedule, as float64 numpy arrays of length ``T``.

    Built with :meth:`from_betas`; ``gather`` turns any of them into a broadcastable tensor for a batch of
    timestep indices.
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @classmethod
    def from_betas(cls, betas) -> "DiffusionTerms":
        b = np.asarray(betas, dtype=np.float64)
        alphas = 1.0 - b
        ac = np.cumprod(alphas)
        ac_prev = np.concatenate([[1.0], ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        post_log = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
        coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        return cls(b, ac, ac_prev, post_var, post_log, coef1, coef2)

    @classmethod
    def from_schedule(cls, schedule) -> "DiffusionTerms":
        """Terms of a :class:`pathgen.diffusion.schedulers.NoiseSchedule` (same β as the samplers use)."""
        return cls.from_betas(schedule.betas())

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def gather(self, name: str, t: torch.Tensor, ndim: int, dtype=torch.float32) -> torch.Tensor:
        """``self.<name>[t]`` as a (B, 1, …, 1) tensor with ``ndim`` dimensions on ``t``'s device."""
        values = torch.from_numpy(getattr(self, name)).to(t.device)[t.long()]
        return values.reshape(-1, *([1] * (ndim - 1))).to(dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε``."""
        ac = self.gather("alphas_cumprod", t, x0.ndim, x0.dtype)
        return ac.sqrt() * x0 + (1.0 - ac).sqrt() * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of ``q(x_{t−1} | x_t, x₀)`` (eqs 5.12–5.14)."""
        mean = (self.gather("posterior_mean_coef1", t, x0.ndim, x0.dtype) * x0
                + self.gather("posterior_mean_coef2", t, x0.ndim, x0.dtype) * xt)
        return mean, self.gather("posterior_log_variance_clipped", t, x0.ndim, x0.dtype).expand_as(x0)

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x̂₀ = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t`` (eq. 5.19)."""
        ac = self.gather("alphas_cumprod", t, xt.ndim, xt.dtype)
        return (xt - (1.0 - ac).sqrt() * eps) / ac.sqrt()

    def model_log_variance(self, v_raw: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Learned-range log-variance ``v·log β_t + (1 − v)·log β̃_t`` with ``v = (v_raw + 1)/2``."""
        min_log = self.gather("posterior_log_variance_clipped", t, v_raw.ndim, v_raw.dtype)
        max_log = torch.log(self.gather("betas", t, v_raw.ndim, v_raw.dtype))
        frac = (v_raw + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log


def simple_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``L_simple`` per sample: mean squared error over all but the batch dimension, shape (B,)."""
    return _mean_flat((noise - eps_pred) ** 2)


def vlb_term(terms: DiffusionTerms, eps_pred: torch.Tensor, v_raw: torch.Tensor, x0: torch.Tensor,
             xt: torch.Tensor, t: torch.Tensor, bin_width: float = 2.0 / 255.0) -> torch.Tensor:
    """``L_t`` per sample in bits per dimension, shape (B,): Gaussian KL for ``t > 0``, decoder NLL for ``t = 0``.

    ``eps_pred`` is detached here (stop-gradient on the mean), so only ``v_raw`` receives gradients.
    """
    x0_hat = terms.predict_x0(xt, t, eps_pred.detach())
    coef1 = terms.gather("posterior_mean_coef1", t, xt.ndim, xt.dtype)
    coef2 = terms.gather("posterior_mean_coef2", t, xt.ndim, xt.dtype)
    model_mean = coef1 * x0_hat + coef2 * xt
    model_log_var = terms.model_log_variance(v_raw, t)
    true_mean, true_log_var = terms.q_posterior(x0, xt, t)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / _LOG2
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var, bin_width)) / _LOG2
    return torch.where(t == 0, nll, kl)


def hybrid_loss(terms: DiffusionTerms, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
                t: torch.Tensor, noise: torch.Tensor, vlb_weight: float = LAMBDA_VLB,
                bin_width: float = 2.0 / 255.0) -> dict[str, torch.Tensor]:
    """The hybrid objective for one batch.

    Parameters
    ----------
    terms : DiffusionTerms
    model_output : (B, 2C, H, W) tensor
        ε then the raw variance values (or (B, C, H, W) for a fixed-variance model: ``L_simple`` only).
    x0, xt, noise : (B, C, H, W) tensors
        Clean data in [−1, 1], its noised version at ``t`` and the noise used.
    t : (B,) long tensor
        Timestep indices ``0 … T−1``.
    vlb_weight : float
        λ (0.001 in NASDM).

    Returns
    -------
    dict
        ``loss`` (scalar, mean over the batch), per-sample ``mse`` and ``vlb`` (bits/dim; zeros without learned
        variance), both (B,).
    """
    channels = x0.shape[1]
    eps_pred = model_output[:, :channels]
    mse = simple_loss(eps_pred, noise)
    if model_output.shape[1] == 2 * channels:
        vlb = vlb_term(terms, eps_pred, model_output[:, channels:], x0, xt, t, bin_width)
    else:
        vlb = torch.zeros_like(mse)
    loss = (mse + vlb_weight * terms.num_timesteps * vlb).mean()
    return {"loss": loss, "mse": mse, "vlb": vlb}
