"""The NASDM denoiser: an SDM-style U-Net (semantic diffusion model, Wang et al. 2022) over RGB tiles.

Layout (METHODS.md §3.4):

* **encoder** — plain :class:`~pathgen.diffusion.blocks.ResBlock` s (conv, SiLU, GroupNorm) with the timestep
  injected by scale-and-shift, self-attention at the low resolutions; the mask is *not* seen by the encoder;
* **middle and decoder** — :class:`~pathgen.diffusion.blocks.SDMResBlock` s, whose GroupNorms are
  spatially-adaptive (SPADE, eq. 5.31) on the 8-channel conditioning tensor resized to each feature size, plus
  the timestep scale-shift; skip connections from the encoder are concatenated as in a U-Net;
* **output** — GroupNorm, SiLU, zero-initialised conv to ``2·3`` channels: ε then the learned-range variance
  interpolation ``v`` (``learn_sigma``).

The mask is neither concatenated to the input nor attended to. The network is fully convolutional apart from
attention, so it runs on any size divisible by ``2^(levels−1)``; pathgen samples larger regions by fusing
overlapping windows of the training size instead (:mod:`pathgen.nasdm.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from pathgen.diffusion.blocks import (AttentionBlock, Downsample, ResBlock, SDMResBlock, TimestepMLP, UNetGeometry,
                                      Upsample, group_count, zero_module)
from pathgen.errors import PathgenError
from pathgen.nasdm.conditioning import COND_CHANNELS


@dataclass(frozen=True)
class NASDMConfig(UNetGeometry):
    """Architecture of the NASDM denoiser (saved in checkpoints).

    Attributes
    ----------
    image_size : int
        Training tile size in pixels (attention resolutions refer to it).
    in_channels, out_channels : int
        3 (RGB) and 6 (ε + variance interpolation).
    cond_channels : int
        Conditioning channels: 7 one-hot classes (background included) + 1 instance-edge map.
    model_channels : int
        Width of the first level.
    channel_mult : tuple of int
        Width multiplier per level; one 2× down-sampling between consecutive levels.
    num_res_blocks : int
        Residual blocks per level (the decoder has one more, for the skip of the down-sampling).
    attention_resolutions : tuple of int
        Feature-map sizes (for ``image_size`` inputs) that get self-attention after each block.
    num_head_channels : int
        Channels per attention head.
    spade_hidden : int
        Width of SPADE's shared conv (128 in NASDM).
    dropout : float
        Dropout inside residual blocks.
    resblock_updown : bool
        Down/up-sample with residual blocks (True in NASDM) instead of strided / nearest+conv layers.
    max_groups : int
        GroupNorm groups (32 in NASDM; reduced to a divisor of narrow widths).
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 6
    cond_channels: int = COND_CHANNELS
    model_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_head_channels: int = 32
    spade_hidden: int = 32
    dropout: float = 0.0
    resblock_updown: bool = True
    max_groups: int = 32


PRESETS: dict[str, NASDMConfig] = {
    # The published NASDM / SDM configuration (scripts/lizard.sh): 128 px, 256 channels, 5 levels.
    "paper": NASDMConfig(image_size=128, model_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
                         attention_resolutions=(32, 16, 8), num_head_channels=64, spade_hidden=128),
    # Trains on CPU in tens of minutes: 32 px windows, 4 levels (32→4 px), attention at 16 and 8 px, 2.3 M
    # parameters (image_size=64 keeps the weights' shapes and moves attention to 16 and 8 px of a 64 px input).
    "small": NASDMConfig(image_size=32, model_channels=16, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                         attention_resolutions=(16, 8), num_head_channels=32, spade_hidden=32),
    # For tests: 16 px, 2 levels.
    "tiny": NASDMConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_head_channels=16, spade_hidden=16, max_groups=8),
}


def preset_config(name: str, **overrides) -> NASDMConfig:
    """A named architecture (``paper``, ``small``, ``tiny``) with fields overridden."""
    if name not in PRESETS:
        raise PathgenError(f"unknown NASDM preset {name!r} (choose {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)


class NASDMUNet(nn.Module):
    """SDM U-Net: ``forward(x (B,3,H,W) in [−1,1], t (B,) long, cond (B,8,H,W)) -> (B,6,H,W)``."""

    def __init__(self, config: NASDMConfig = NASDMConfig()):
        super().__init__()
        self.config = cfg = config
        ch0 = cfg.model_channels
        emb_dim = 4 * ch0
        g = cfg.max_groups
        attn_at = cfg.attention_factors()
        self.time_embed = TimestepMLP(ch0, emb_dim)
        self.input_conv = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)

        self.encoder = nn.ModuleList()
        skip_channels = [ch0]
        ch, ds = ch0, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, mult * ch0, emb_dim, cfg.dropout, max_groups=g)]
                ch = mult * ch0
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, g))
                self.encoder.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                down = (ResBlock(ch, ch, emb_dim, cfg.dropout, down=True, max_groups=g) if cfg.resblock_updown
                        else Downsample(ch))
                self.encoder.append(nn.ModuleList([down]))
                skip_channels.append(ch)
                ds *= 2

        self.middle = nn.ModuleList([
            SDMResBlock(ch, ch, emb_dim, cfg.cond_channels, cfg.spade_hidden, cfg.dropout, max_groups=g),
            AttentionBlock(ch, cfg.num_head_channels, g),
            SDMResBlock(ch, ch, emb_dim, cfg.cond_channels, cfg.spade_hidden, cfg.dropout, max_groups=g),
        ])

        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                skip = skip_channels.pop()
                layers = [SDMResBlock(ch + skip, mult * ch0, emb_dim, cfg.cond_channels, cfg.spade_hidden,
                                      cfg.dropout, max_groups=g)]
                ch = mult * ch0
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, g))
                if level and i == cfg.num_res_blocks:
                    layers.append(SDMResBlock(ch, ch, emb_dim, cfg.cond_channels, cfg.spade_hidden, cfg.dropout,
                                              up=True, max_groups=g) if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.decoder.append(nn.ModuleList(layers))

        self.out = nn.Sequential(nn.GroupNorm(group_count(ch, g), ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, SDMResBlock):
                h = layer(h, emb, cond)
            elif isinstance(layer, ResBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.shape[-1] % cfg.downsample_factor or x.shape[-2] % cfg.downsample_factor:
            raise PathgenError(f"input size {tuple(x.shape[-2:])} is not divisible by {cfg.downsample_factor}")
        if cond.shape[1] != cfg.cond_channels:
            raise PathgenError(f"conditioning has {cond.shape[1]} channels, the model expects {cfg.cond_channels}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t)
        cond = cond.to(x.dtype)
        h = self.input_conv(x)
        skips = [h]
        for layers in self.encoder:
            h = self._run(layers, h, emb, None)
            skips.append(h)
        h = self._run(self.middle, h, emb, cond)
        for layers in self.decoder:
            h = self._run(layers, torch.cat([h, skips.pop()], dim=1), emb, cond)
        return self.out(h)


def build_unet(config: NASDMConfig) -> NASDMUNet:
    """A freshly initialised NASDM denoiser (deterministic under ``torch.manual_seed``)."""
    return NASDMUNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["NASDMConfig", "NASDMUNet", "PRESETS", "build_unet", "count_parameters", "preset_config"]
