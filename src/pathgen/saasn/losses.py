"""Every SAASN loss term (METHODS.md §2.3, eqs 4.1–4.9).

Images are ``(B, 3, H, W)`` tensors in [-1, 1]; ``x`` is a batch of source images (any site of X), ``y`` a batch
of target images. Generator objective (minimised)::

    L_G = adv(D_Y(G_x2y(x)) → real) + adv(D_X(G_y2x(y)) → real)
        + α · (‖G_y2x(G_x2y(x)) − x‖₁ + ‖G_x2y(G_y2x(y)) − y‖₁)                        cycle        (4.3)
        + β · (½(1 − SSIM(G_y2x(G_x2y(x)), x)) + ½(1 − SSIM(G_x2y(G_y2x(y)), y)))         structural   (4.4)
        + γ · (½(1 − SSIM(G_x2y(x), x)) + ½(1 − SSIM(G_y2x(y), y)))                      input-output (4.5)
        + δ · (‖G_x2y(y) − y‖₁ + ‖G_y2x(x) − x‖₁)                                      identity     (4.7)

with SSIM on grayscale images (the text; ``scyc_grayscale=False`` gives the reference code's RGB structural term)
and ‖·‖₁ the mean absolute difference. Discriminators (minimised; each is half the sum of its terms, as the
reference code halves real + fake)::

    L_DY = ½ [adv(D_Y(y) → real) + adv(D_Y(fake_y) → fake)]                                               (4.1)
    L_DX = ½ [adv(D_X(x) → real) + adv(D_X(fake_x) → fake) + adv(D_X(y) → fake)]   boundary control      (4.2)

Boundary control teaches ``D_X`` that real target images are "not X"; it involves no generator, so it changes
the ``D_X`` update and nothing else. It is absent from the authors' public code; ``boundary_control=False``
removes it. ``fake_x`` and ``fake_y`` come from the replay buffers.

Adversarial terms: ``"lsgan"`` is the mean squared error of the raw output to 1 (real) or 0 (fake); ``"bce"``
is binary cross-entropy on logits (the text's log-likelihood form). The default is LSGAN: the text reports it
stabilised training with no visible difference, and it is the only form in the authors' code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from pathgen.errors import PathgenError
from pathgen.saasn.ssim import ssim_from_tanh

ADVERSARIAL = ("lsgan", "bce")


@dataclass
class LossConfig:
    """Weights and switches of the SAASN objective (defaults: the text's α = β = γ = 10, δ = 0.1).

    Attributes
    ----------
    adversarial : {"lsgan", "bce"}
    alpha : float
        L1 cycle weight.
    beta : float
        Structural (SSIM) cycle weight.
    gamma : float
        Input-vs-output SSIM weight.
    delta : float
        Identity weight.
    boundary_control : bool
        Add ``adv(D_X(y) → fake)`` to the ``D_X`` loss.
    scyc_grayscale : bool
        Structural cycle on grayscale (text) or RGB (reference code) images.
    dssim_on_generated : bool
        Also apply the input-output SSIM term to generated inputs and their re-translations (reference code).
    """

    adversarial: str = "lsgan"
    alpha: float = 10.0
    beta: float = 10.0
    gamma: float = 10.0
    delta: float = 0.1
    boundary_control: bool = True
    scyc_grayscale: bool = True
    dssim_on_generated: bool = False

    def __post_init__(self):
        if self.adversarial not in ADVERSARIAL:
            raise PathgenError(f"unknown adversarial loss {self.adversarial!r} (choose {', '.join(ADVERSARIAL)})")
        for name in ("alpha", "beta", "gamma", "delta"):
            if float(getattr(self, name)) < 0:
                raise PathgenError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LossConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def cyclegan(cls, adversarial: str = "lsgan") -> "LossConfig":
        """The ablation: CycleGAN/StainGAN objective (adversarial, L1 cycle, identity); SAASN's terms off."""
        return cls(adversarial=adversarial, beta=0.0, gamma=0.0, boundary_control=False)


def adversarial_loss(output: torch.Tensor | tuple[torch.Tensor, ...], real: bool, kind: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of a discriminator output map against the label "real" (1) or "fake" (0).

    Parameters
    ----------
    output : tensor, shape (B, 1, h, w), or a tuple of such maps
        Raw discriminator outputs (logits for ``"bce"``); a tuple (patch and pixel branches) gives the sum of
        the maps' losses.
    real : bool
    kind : {"lsgan", "bce"}

    Returns
    -------
    Scalar tensor: mean over patches and batch.
    """
    if isinstance(output, (tuple, list)):  # several decision maps (patch + pixel): their losses add
        return sum(adversarial_loss(o, real, kind) for o in output)
    target = torch.full_like(output, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(output, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(output, target)
    raise PathgenError(f"unknown adversarial loss {kind!r} (choose {', '.join(ADVERSARIAL)})")


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (scalar)."""
    return (a - b).abs().mean()


def dissimilarity(a: torch.Tensor, b: torch.Tensor, grayscale: bool = True) -> torch.Tensor:
    """``½ (1 − SSIM(a, b))`` averaged over the batch; images in [-1, 1]. 0 for identical images."""
    return 0.5 * (1.0 - ssim_from_tanh(a, b, grayscale=grayscale)).mean()


@dataclass
class GeneratorOutputs:
    """Images produced in one generator step (kept for the discriminator step and the sample grid)."""

    fake_y: torch.Tensor  # G_x2y(x)
    fake_x: torch.Tensor  # G_y2x(y)
    rec_x: torch.Tensor  # G_y2x(G_x2y(x))
    rec_y: torch.Tensor  # G_x2y(G_y2x(y))


def generator_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig = LossConfig()
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], GeneratorOutputs]:
    """The generators' objective ``L_G`` (module docstring) for one batch.

    Parameters
    ----------
    model : pathgen.saasn.networks.SAASN
    x, y : tensor, shape (B, 3, H, W), float in [-1, 1]
        Source and target batches (batch sizes may differ).
    cfg : LossConfig

    Returns
    -------
    total : scalar tensor
    terms : dict of scalar tensors
        ``adv_g`` (sum of both directions), ``cycle``, ``scycle``, ``dssim``, ``identity`` (unweighted).
    outputs : GeneratorOutputs
    """
    fake_y = model.g_x2y(x)
    fake_x = model.g_y2x(y)
    rec_x = model.g_y2x(fake_y)
    rec_y = model.g_x2y(fake_x)
    adv = (adversarial_loss(model.d_y(fake_y), True, cfg.adversarial)
           + adversarial_loss(model.d_x(fake_x), True, cfg.adversarial))
    cycle = l1(rec_x, x) + l1(rec_y, y)
    zero = x.new_zeros(())
    scycle = (dissimilarity(rec_x, x, cfg.scyc_grayscale) + dissimilarity(rec_y, y, cfg.scyc_grayscale)
              if cfg.beta > 0 else zero)
    if cfg.gamma > 0:
        dssim = dissimilarity(fake_y, x) + dissimilarity(fake_x, y)
        if cfg.dssim_on_generated:
            dssim = dssim + dissimilarity(rec_x, fake_y) + dissimilarity(rec_y, fake_x)
    else:
        dssim = zero
    identity = (l1(model.g_x2y(y), y) + l1(model.g_y2x(x), x)) if cfg.delta > 0 else zero
    total = adv + cfg.alpha * cycle + cfg.beta * scycle + cfg.gamma * dssim + cfg.delta * identity
    terms = {"adv_g": adv, "cycle": cycle, "scycle": scycle, "dssim": dssim, "identity": identity}
    return total, terms, GeneratorOutputs(fake_y, fake_x, rec_x, rec_y)


def discriminator_losses(model, x: torch.Tensor, y: torch.Tensor, fake_x: torch.Tensor, fake_y: torch.Tensor,
                         cfg: LossConfig = LossConfig()) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``L_DX`` and ``L_DY`` (module docstring) for one batch.

    Parameters
    ----------
    model : pathgen.saasn.networks.SAASN
    x, y : tensor, (B, 3, H, W) in [-1, 1]
        Real source and target images.
    fake_x, fake_y : tensor, (B, 3, H, W) in [-1, 1]
        Generated images (from the replay buffers); detached here.
    cfg : LossConfig

    Returns
    -------
    loss_dx, loss_dy : scalar tensors
    terms : dict
        ``boundary``: the unweighted boundary-control term (0 when switched off).
    """
    kind = cfg.adversarial
    loss_dy = 0.5 * (adversarial_loss(model.d_y(y), True, kind)
                     + adversarial_loss(model.d_y(fake_y.detach()), False, kind))
    dx_terms = adversarial_loss(model.d_x(x), True, kind) + adversarial_loss(model.d_x(fake_x.detach()), False, kind)
    if cfg.boundary_control:
        boundary = adversarial_loss(model.d_x(y), False, kind)
        dx_terms = dx_terms + boundary
    else:
        boundary = x.new_zeros(())
    return 0.5 * dx_terms, loss_dy, {"boundary": boundary}
