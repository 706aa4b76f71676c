"""Building blocks of pathgen's diffusion U-Nets (guided-diffusion / SDM design).

* :func:`timestep_embedding` — sinusoidal embedding of the timestep index;
* :class:`ResBlock` — GroupNorm, SiLU, conv, then the timestep injected by scale-and-shift
  ``h = Norm(h)·(1 + w(t)) + b(t)`` (``use_scale_shift_norm``), SiLU, dropout, zero-initialised conv; optional
  2× down/up-sampling inside the block (``resblock_updown``);
* :class:`SPADEGroupNorm` — parameter-free GroupNorm modulated by a spatial map:
  ``Norm(h)·(1 + γ(y)) + β(y)``, with γ, β from a shared 3×3 conv + ReLU on the map resized (nearest) to the
  feature size, then one 3×3 conv each (eq. 5.31);
* :class:`SDMResBlock` — a ResBlock whose both norms are SPADE, the second one also scale-shifted by the timestep;
* :class:`AttentionBlock` — multi-head self-attention over spatial positions, zero-initialised projection.

The output convolutions of residual branches start at zero, so a fresh network is the identity plus a zero
residual: diffusion training is stable from the first step.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from pathgen.errors import PathgenError


class UNetGeometry:
    """Shared geometry of the diffusion U-Net configs (NASDM, MaskGen): frozen dataclasses with ``image_size``,
    ``channel_mult``, ``attention_resolutions``, ``model_channels`` and ``num_res_blocks``; this adds the checks,
    the derived sizes and the JSON round trip (tuples are stored as lists)."""

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if self.model_channels < 1 or self.num_res_blocks < 1 or not self.channel_mult:
            raise PathgenError("model_channels, num_res_blocks and channel_mult must be positive / non-empty")
        if self.image_size % self.downsample_factor:
            raise PathgenError(f"image_size {self.image_size} is not divisible by the U-Net's total "
                               f"down-sampling {self.downsample_factor}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def attention_factors(self) -> set[int]:
        """Down-sampling factors (1, 2, 4, …) at which attention is applied."""
        return {self.image_size // r for r in self.attention_resolutions if r > 0 and self.image_size % r == 0}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: dict):
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs groups | channels)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps → (B, dim) embedding ``[cos(t·f_k), sin(t·f_k)]`` with ``f_k = max_period^(−k/half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepMLP(nn.Module):
    """Sinusoidal embedding of ``model_channels`` followed by Linear–SiLU–Linear to ``embed_dim``."""

    def __init__(self, model_channels: int, embed_dim: int):
        super().__init__()
        self.model_channels = model_channels
        self.mlp = nn.Sequential(nn.Linear(model_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.model_channels))


class Downsample(nn.Module):
    """2× down-sampling by a stride-2 3×3 conv (or average pooling when ``use_conv`` is False)."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """2× nearest up-sampling followed by a 3×3 conv (if ``use_conv``)."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


def _resample(x: torch.Tensor, up: bool, down: bool) -> torch.Tensor:
    if up:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    if down:
        return F.avg_pool2d(x, 2)
    return x


class ResBlock(nn.Module):
    """Encoder residual block with the timestep injected by scale-and-shift (no spatial condition).

    Parameters
    ----------
    channels, out_channels : int
    embed_dim : int
        Width of the timestep (+ class) embedding.
    dropout : float
    up, down : bool
        Resample 2× inside the block (guided-diffusion's ``resblock_updown``).
    max_groups : int
        GroupNorm groups (reduced to a divisor of the width).
    """

    def __init__(self, channels: int, out_channels: int, embed_dim: int, dropout: float = 0.0,
                 up: bool = False, down: bool = False, max_groups: int = 32):
        super().__init__()
        self.up, self.down = up, down
        self.in_norm = nn.GroupNorm(group_count(channels, max_groups), channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_channels))
        self.out_norm = nn.GroupNorm(group_count(out_channels, max_groups), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(_resample(h, self.up, self.down))
        x = _resample(x, self.up, self.down)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1.0 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SPADEGroupNorm(nn.Module):
    """``GroupNorm(h; affine=False)·(1 + γ(y)) + β(y)`` with γ, β predicted from the spatial map ``y``.

    Parameters
    ----------
    channels : int
        Feature channels.
    cond_channels : int
        Channels of ``y`` (NASDM: 8).
    hidden : int
        Width of the shared conv (128 in SDM/NASDM).
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128, max_groups: int = 32,
                 eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels, max_groups), channels, affine=False, eps=eps)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape[-2:] != x.shape[-2:]:
            cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        a = self.shared(cond)
        return self.norm(x) * (1.0 + self.gamma(a)) + self.beta(a)


class SDMResBlock(nn.Module):
    """Residual block conditioned on a spatial map at both norms (SPADE) and on the timestep (scale-shift).

    ``h = conv(SiLU(SPADE₁(x, y)))``; ``h = SPADE₂(h, y)·(1 + s(t)) + b(t)``; ``out = skip(x) + conv₀(SiLU(h))``
    with ``conv₀`` zero-initialised.
    """

    def __init__(self, channels: int, out_channels: int, embed_dim: int, cond_channels: int,
                 spade_hidden: int = 128, dropout: float = 0.0, up: bool = False, down: bool = False,
                 max_groups: int = 32):
        super().__init__()
        self.up, self.down = up, down
        self.in_norm = SPADEGroupNorm(channels, cond_channels, spade_hidden, max_groups)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_channels))
        self.out_norm = SPADEGroupNorm(out_channels, cond_channels, spade_hidden, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x, cond))
        h = self.in_conv(_resample(h, self.up, self.down))
        x = _resample(x, self.up, self.down)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h, cond) * (1.0 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, residual, zero-initialised output projection.

    ``num_head_channels`` fixes the width per head (heads = channels / num_head_channels, at least 1).
    """

    def __init__(self, channels: int, num_head_channels: int = 64, max_groups: int = 32):
        super().__init__()
        self.heads = max(1, channels // max(1, num_head_channels))
        if channels % self.heads:
            self.heads = 1
        self.norm = nn.GroupNorm(group_count(channels, max_groups), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, N)
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        out = out.permute(0, 1, 3, 2).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)
