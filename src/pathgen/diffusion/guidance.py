"""Classifier-free guidance with one convention, used by every pathgen diffusion model.

Convention (Ho & Salimans 2022, on noise predictions)::

    ε̂ = ε_u + s · (ε_c − ε_u)

with ``ε_c = ε_θ(x_t, y, t)`` the conditional prediction and ``ε_u = ε_θ(x_t, ∅, t)`` the prediction under the
null condition (all-zero conditioning). Every value of ``s`` does what it says:

* ``s = 0`` — unconditional sampling: only the null-condition pass runs and its output (ε *and* learned variance)
  is used unchanged;
* ``s = 1`` — plain conditional sampling: only the conditional pass runs and its output is used unchanged;
* ``s > 1`` — stronger guidance, ``0 < s < 1`` — an interpolation, ``s < 0`` — pushes away from the condition.
  Both passes run (batched into one forward call) and ε̂ follows the formula above.

Learned variance: when the model also predicts the variance interpolation ``v`` (improved DDPM), the guided output
carries the **conditional pass's** ``v`` whenever the conditional pass is evaluated (every ``s ≠ 0``); guidance
only mixes the ε channels. At ``s = 0`` the variance comes from the null-condition pass, so ``s = 0`` is exactly
the unconditional model.

The printed NASDM rule guides samples, ``x^c + w(x^c − x^u)``; on ε it is the rule above with ``s = 1 + w``.
Unlike the NASDM reference sampler, nothing is gated on ``s > 1``: ``s = 0`` and ``s = 0.5`` are not silently
turned into ``s = 1``.
"""

from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guidance_passes(scale: float) -> tuple[bool, bool]:
    """Which passes a guidance scale needs: ``(unconditional, conditional)``."""
    s = float(scale)
    if s == 0.0:
        return True, False
    if s == 1.0:
        return False, True
    return True, True


def combine_guidance(eps_uncond: torch.Tensor | None, eps_cond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``ε_u + s·(ε_c − ε_u)``; returns ``ε_u`` itself at ``s = 0`` and ``ε_c`` itself at ``s = 1`` (exact).

    Parameters
    ----------
    eps_uncond, eps_cond : (B, C, H, W) tensors
        Null-condition and conditional noise predictions (the one a scale does not need may be None).
    scale : float
        Guidance scale ``s``.
    """
    s = float(scale)
    if s == 0.0:
        if eps_uncond is None:
            raise ValueError("guidance scale 0 needs the unconditional prediction")
        return eps_uncond
    if s == 1.0:
        if eps_cond is None:
            raise ValueError("guidance scale 1 needs the conditional prediction")
        return eps_cond
    if eps_uncond is None or eps_cond is None:
        raise ValueError(f"guidance scale {s} needs both predictions")
    return eps_uncond + s * (eps_cond - eps_uncond)


def combine_outputs(out_uncond: torch.Tensor | None, out_cond: torch.Tensor | None, scale: float,
                    eps_channels: int) -> torch.Tensor:
    """Guide full model outputs: mix the first ``eps_channels`` channels, keep the rest (learned variance) from
    the conditional output (from the unconditional one at ``s = 0``)."""
    s = float(scale)
    if s == 0.0:
        return combine_guidance(out_uncond, None, s)
    if s == 1.0:
        return combine_guidance(None, out_cond, s)
    eps = combine_guidance(out_uncond[:, :eps_channels], out_cond[:, :eps_channels], s)
    if out_cond.shape[1] == eps_channels:
        return eps
    return torch.cat([eps, out_cond[:, eps_channels:]], dim=1)


def null_condition(cond: torch.Tensor) -> torch.Tensor:
    """The null condition for ``cond``: zeros of the same shape (NASDM: all 8 channels, background included)."""
    return torch.zeros_like(cond)


def guided_denoiser(model: ModelFn, cond: torch.Tensor, scale: float, eps_channels: int,
                    null: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model(x, t, cond)`` into ``denoise(x, t)`` applying classifier-free guidance.

    Parameters
    ----------
    model : callable
        ``model(x (B, C, H, W), t (B,) long, cond (B, ...)) -> (B, C_out, H, W)``.
    cond : tensor (B, ...)
        The condition, batched like ``x``.
    scale : float
        Guidance scale ``s`` (see the module docstring).
    eps_channels : int
        Channels of ε in the model output (the sample's channels).
    null : tensor, optional
        Null condition; zeros like ``cond`` by default.

    Returns
    -------
    callable
        ``denoise(x, t) -> output`` making exactly one model call per invocation (both passes, when needed, are
        concatenated along the batch).
    """
    null = null_condition(cond) if null is None else null
    need_u, need_c = guidance_passes(scale)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = _batch_timesteps(t, x.shape[0], x.device)
        if need_u and need_c:
            out = model(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([null, cond]))
            out_u, out_c = out.chunk(2)
            return combine_outputs(out_u, out_c, scale, eps_channels)
        if need_c:
            return model(x, tb, cond)
        return model(x, tb, null)

    return denoise


def _batch_timesteps(t, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    return t.long()
