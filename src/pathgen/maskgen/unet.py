"""The MaskGen denoiser: an attention U-Net over encoded masks, conditioned on a nucleus-type presence vector.

As specified (METHODS.md §4.1): the multi-hot presence vector (7 entries, background always 1) goes "through a
linear layer" and is added to the timestep embedding; the backbone is an improved-diffusion U-Net "enhanced with
attention mechanisms" — residual blocks with timestep scale-shift, self-attention at low resolutions — with
learned variance (output ``2 × 8`` channels: ε then ``v``). The null condition for guidance is the all-zero vector.

Per-channel means ("DC"). Every GroupNorm removes the spatial mean of each of its groups, and with 16 channels and
up to 32 groups (the small preset before this was fixed) every group is a single channel: the output layer's
GroupNorm then erases each feature's spatial mean, so ε̂'s per-channel mean can depend neither on the input's
per-channel mean nor on ``t``. Training hardly notices (the per-channel mean of the true ε over a 32 × 32 crop has
variance 1/1024), but sampling from noise must *create* the class channels' means (background ≈ +0.7, each nucleus
type ≈ −0.95 on [−1, 1] one-hot data): without them every class stays equally likely and argmax decoding turns
~6/7 of the pixels into fragments of nuclei. Two remedies, both in the presets: ``max_groups`` small enough that
every GroupNorm group holds at least two channels, and ``dc_path`` — a zero-initialised per-sample affine map
``ε̂_dc = A(emb)·mean(x) + b(emb)`` (``emb`` = timestep + presence embedding) added per channel to the output,
so the mean of ε̂ can follow the input's mean, the timestep and the requested types directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from pathgen.diffusion.blocks import AttentionBlock, Downsample, ResBlock, TimestepMLP, UNetGeometry, Upsample, \
    group_count, zero_module
from pathgen.errors import PathgenError
from pathgen.maskgen.encoding import MASK_CHANNELS
from pathgen.nasdm.conditioning import NUM_CLASSES


@dataclass(frozen=True)
class MaskGenConfig(UNetGeometry):
    """Architecture of the MaskGen denoiser (saved in checkpoints); fields as in
    :class:`pathgen.nasdm.unet.NASDMConfig`, plus ``num_classes`` (presence-vector length)."""

    image_size: int = 32
    in_channels: int = MASK_CHANNELS
    out_channels: int = 2 * MASK_CHANNELS
    num_classes: int = NUM_CLASSES
    model_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8, 4)
    num_head_channels: int = 32
    dropout: float = 0.0
    resblock_updown: bool = True
    max_groups: int = 32
    dc_path: bool = False  # False for checkpoints written before it existed (their config.json lacks the key)


PRESETS: dict[str, MaskGenConfig] = {
    # MaskDiff's expert-review run: 128 px, 128 channels, 3 res-blocks (improved-diffusion defaults otherwise).
    "paper": MaskGenConfig(image_size=128, model_channels=128, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=3,
                           attention_resolutions=(16, 8), num_head_channels=64, dc_path=True),
    # CPU-trainable: 32 px masks, 4 levels, attention at 8 and 4 px; 8 GroupNorm groups, so a 16-channel
    # GroupNorm has 2 channels per group instead of degenerating into a per-channel (instance) norm.
    "small": MaskGenConfig(image_size=32, model_channels=16, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                           attention_resolutions=(8, 4), num_head_channels=32, max_groups=8, dc_path=True),
    "tiny": MaskGenConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(8,), num_head_channels=16, max_groups=8, dc_path=True),
}


def preset_config(name: str, **overrides) -> MaskGenConfig:
    if name not in PRESETS:
        raise PathgenError(f"unknown MaskGen preset {name!r} (choose {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)


class MaskGenUNet(nn.Module):
    """``forward(x (B,8,H,W), t (B,), presence (B,7)) -> (B,16,H,W)``."""

    def __init__(self, config: MaskGenConfig = MaskGenConfig()):
        super().__init__()
        self.config = cfg = config
        ch0 = cfg.model_channels
        emb_dim = 4 * ch0
        g = cfg.max_groups
        attn_at = cfg.attention_factors()
        self.time_embed = TimestepMLP(ch0, emb_dim)
        self.class_embed = nn.Linear(cfg.num_classes, emb_dim)
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
        self.middle = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout, max_groups=g),
                                     AttentionBlock(ch, cfg.num_head_channels, g),
                                     ResBlock(ch, ch, emb_dim, cfg.dropout, max_groups=g)])
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                skip = skip_channels.pop()
                layers = [ResBlock(ch + skip, mult * ch0, emb_dim, cfg.dropout, max_groups=g)]
                ch = mult * ch0
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, g))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, ch, emb_dim, cfg.dropout, up=True, max_groups=g)
                                  if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.decoder.append(nn.ModuleList(layers))
        self.out = nn.Sequential(nn.GroupNorm(group_count(ch, g), ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))
        # Built last so the other layers' initial weights do not depend on it; zero at initialisation.
        if cfg.dc_path:
            self.dc_bias = zero_module(nn.Linear(emb_dim, cfg.out_channels))
            self.dc_gain = zero_module(nn.Linear(emb_dim, cfg.out_channels * cfg.in_channels))
        else:
            self.dc_bias = self.dc_gain = None

    @staticmethod
    def _run(layers, h, emb):
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.shape[-1] % cfg.downsample_factor or x.shape[-2] % cfg.downsample_factor:
            raise PathgenError(f"input size {tuple(x.shape[-2:])} is not divisible by {cfg.downsample_factor}")
        if presence.ndim != 2 or presence.shape[1] != cfg.num_classes:
            raise PathgenError(f"presence vectors must be (B, {cfg.num_classes}), got {tuple(presence.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t) + self.class_embed(presence.to(x.dtype))
        h = self.input_conv(x)
        skips = [h]
        for layers in self.encoder:
            h = self._run(layers, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)
        for layers in self.decoder:
            h = self._run(layers, torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h)
        if self.dc_bias is not None:
            gain = self.dc_gain(emb).reshape(x.shape[0], cfg.out_channels, cfg.in_channels)
            dc = self.dc_bias(emb) + torch.einsum("boi,bi->bo", gain, x.mean(dim=(-2, -1)))
            out = out + dc[:, :, None, None]
        return out
