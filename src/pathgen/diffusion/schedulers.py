"""Noise schedules and samplers: one factory over the diffusers schedulers.

A model is trained once against a :class:`NoiseSchedule` (``T`` steps of a β schedule, by default NASDM's
linear 1e-4 → 0.02 over 1000 steps) and sampled with any of three samplers, chosen at sampling time together
with a step count:

``ddpm``
    Ancestral sampling (``DDPMScheduler``). With a learned-variance model the variance is the learned range
    ``exp(v·log β_t + (1 − v)·log β̃_t)`` of improved DDPM, computed on the *respaced* chain (β and β̃ of the kept
    timesteps), exactly as improved-diffusion's timestep respacing does. Kept timesteps are evenly spaced over
    ``0 … T−1`` including both ends (``linspace``), as improved-diffusion's ``space_timesteps(T, "N")``.
``ddim``
    Deterministic DDIM (η = 0, ``DDIMScheduler``), ``trailing`` spacing so the first step starts from ``T−1``.
``dpm``
    DPM-Solver++ multistep, second order (``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")``), the
    diffusers recommendation for guided sampling in ~20 steps.

DDIM and DPM-Solver++ use only the ε channels of a learned-variance model; :func:`split_model_output` and
:func:`scheduler_input` do the splitting so the diffusers DPM scheduler's hard-coded ``[:, :3]`` never applies.
All three clip the predicted ``x̂₀`` to [−1, 1] (improved-diffusion's ``clip_denoised=True``) unless
``clip_sample=False``; for DPM-Solver++ this is diffusers' dynamic thresholding with the ceiling at 1, which
reduces to plain clipping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from pathgen.errors import PathgenError

SCHEDULERS = ("ddpm", "ddim", "dpm")
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2", "scaled_linear")


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward process a model is trained against (saved in every checkpoint).

    Attributes
    ----------
    num_train_timesteps : int
        ``T``; training timesteps are drawn uniformly from ``0 … T−1`` (0-based: index ``t`` is step ``t+1``).
    beta_start, beta_end : float
        End points of the linear β schedule (NASDM: 1e-4 → 0.02 for T = 1000; improved-diffusion rescales them
        by ``1000/T`` for other ``T``, :func:`linear_schedule_for` does the same).
    beta_schedule : str
        ``linear`` (NASDM), ``squaredcos_cap_v2`` (improved DDPM cosine) or ``scaled_linear``.
    learned_variance : bool
        The model outputs ``2·C`` channels: ε then the variance interpolation ``v`` in [−1, 1].
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    learned_variance: bool = True

    def __post_init__(self):
        if self.num_train_timesteps < 2:
            raise PathgenError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise PathgenError(f"unknown beta schedule {self.beta_schedule!r} (choose {', '.join(BETA_SCHEDULES)})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NoiseSchedule":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def betas(self) -> np.ndarray:
        """(T,) float64 β_t, the same values the diffusers schedulers build from this schedule."""
        sched = make_scheduler("ddpm", schedule=self)
        return sched.betas.double().numpy()


def linear_schedule_for(num_train_timesteps: int, learned_variance: bool = True) -> NoiseSchedule:
    """NASDM's linear schedule scaled as improved-diffusion does for ``T ≠ 1000``: β 1e-4·1000/T → 0.02·1000/T."""
    scale = 1000.0 / num_train_timesteps
    return NoiseSchedule(num_train_timesteps, 1e-4 * scale, 0.02 * scale, "linear", learned_variance)


def make_scheduler(name: str, num_train_timesteps: int | None = None, *, schedule: NoiseSchedule | None = None,
                   clip_sample: bool = True, solver_order: int = 2):
    """Build a diffusers scheduler for a trained model's noise schedule.

    Parameters
    ----------
    name : {"ddpm", "ddim", "dpm"}
        Sampler (see the module docstring).
    num_train_timesteps : int, optional
        ``T``; shorthand for ``schedule=linear_schedule_for(T)`` when ``schedule`` is not given.
    schedule : NoiseSchedule, optional
        The training schedule (defaults to NASDM's: T = 1000, linear 1e-4 → 0.02, learned variance).
    clip_sample : bool
        Clip the predicted ``x̂₀`` to [−1, 1] at every step.
    solver_order : int
        DPM-Solver++ order (2 for guided sampling, 3 unguided).

    Returns
    -------
    diffusers.SchedulerMixin
        Call ``set_timesteps(steps)`` then ``step(...)``; :func:`pathgen.diffusion.sampling.sample_loop` does both.
    """
    if schedule is None:
        schedule = NoiseSchedule() if num_train_timesteps is None else linear_schedule_for(num_train_timesteps)
    elif num_train_timesteps is not None and num_train_timesteps != schedule.num_train_timesteps:
        raise PathgenError(f"num_train_timesteps {num_train_timesteps} contradicts the schedule's "
                           f"{schedule.num_train_timesteps}")
    key = (name or "").lower()
    common = dict(num_train_timesteps=schedule.num_train_timesteps, beta_start=schedule.beta_start,
                  beta_end=schedule.beta_end, beta_schedule=schedule.beta_schedule, prediction_type="epsilon")
    if key == "ddpm":
        from diffusers import DDPMScheduler

        return DDPMScheduler(**common, variance_type="learned_range" if schedule.learned_variance else "fixed_small",
                             clip_sample=clip_sample, clip_sample_range=1.0, timestep_spacing="linspace")
    if key == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler(**common, clip_sample=clip_sample, clip_sample_range=1.0, set_alpha_to_one=True,
                             timestep_spacing="trailing")
    if key == "dpm":
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=solver_order,
                                           thresholding=clip_sample, sample_max_value=1.0,
                                           dynamic_thresholding_ratio=0.995, lower_order_final=True,
                                           timestep_spacing="linspace")
    raise PathgenError(f"unknown scheduler {name!r} (choose {', '.join(SCHEDULERS)})")


def scheduler_name(scheduler) -> str:
    """``ddpm``, ``ddim`` or ``dpm`` for a scheduler built by :func:`make_scheduler` (or its diffusers class)."""
    cls = type(scheduler).__name__
    return {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpm"}.get(cls, cls)


def uses_learned_variance(scheduler) -> bool:
    """True when ``scheduler.step`` consumes the variance channels (DDPM with ``learned_range``)."""
    return getattr(getattr(scheduler, "config", None), "variance_type", None) in ("learned", "learned_range")


def split_model_output(output: torch.Tensor, sample_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a model output into (ε, variance values or None) along channels."""
    if output.shape[1] == 2 * sample_channels:
        return output[:, :sample_channels], output[:, sample_channels:]
    if output.shape[1] == sample_channels:
        return output, None
    raise PathgenError(f"model output has {output.shape[1]} channels; expected {sample_channels} or "
                       f"{2 * sample_channels}")


def scheduler_input(scheduler, output: torch.Tensor, sample_channels: int) -> torch.Tensor:
    """What ``scheduler.step`` should receive: the full ε + v output for learned-range DDPM, else ε only."""
    eps, var = split_model_output(output, sample_channels)
    if var is not None and uses_learned_variance(scheduler):
        return output
    return eps
