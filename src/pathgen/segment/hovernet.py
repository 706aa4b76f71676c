"""HoVer-Net: a pre-activation ResNet encoder and three decoders (NP, HV, optional TP).

The layout follows Graham et al. (2019) and the public PyTorch HoVer-Net: a stride-1 7x7 stem, four
pre-activation bottleneck stages (the second to fourth halve the resolution, so the deepest features are at 1/8),
a 1x1 bottleneck, and per branch three up-sampling stages (nearest x2, sum with the encoder skip, conv, dense
block, 1x1 conv) ending in a 1x1 classifier at full resolution.

Unlike the reference, every convolution is "same"-padded, so the output has the input's size (a multiple of 8);
the tile engine handles borders with overlapping margins instead of the reference's valid-convolution crops.

Encoder parameter names match the reference's (``conv0.conv``, ``d0.units.0.conv1``, ``d0.blk_bna.bn`` ...), so
an ImageNet pre-activation ResNet-50 state dict in that naming loads with :func:`load_encoder_weights`.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pathgen.errors import PathgenError
from pathgen.io.checkpoint import read_state_dict

#: Spatial reduction of the deepest encoder stage; network inputs must be a multiple of this.
DOWNSAMPLE = 8


@dataclass(frozen=True)
class HoVerNetConfig:
    """Architecture and output description of a HoVer-Net model.

    Parameters
    ----------
    stem_channels : int
        Output channels of the 7x7 stride-1 stem convolution.
    stem_kernel : int
        Kernel size of the stem convolution.
    encoder_widths : tuple of 4 int
        Output channels of the four residual stages (ResNet-50: 256, 512, 1024, 2048).
    encoder_depths : tuple of 4 int
        Bottleneck units per stage (ResNet-50: 3, 4, 6, 3).
    bottleneck_ratio : int
        Stage width divided by the width of the units' inner 1x1/3x3 convolutions (4 in ResNet-50).
    decoder_widths : tuple of 3 int
        Channels of the first convolution of the three up-sampling stages (256, 128, 64 in the reference).
    dense_units : tuple of 2 int
        Dense-block units in the first two up-sampling stages (8, 4 in the reference).
    dense_growth : int
        Channels each dense unit adds (32 in the reference).
    dense_bottleneck : int
        Channels of the 1x1 convolution inside a dense unit (128 in the reference).
    dense_groups : int
        Groups of the dense units' spatial convolution (4 in the reference).
    decoder_kernel : int
        Kernel size of the decoder's spatial convolutions (5 in the reference's "original" mode, 3 in "fast").
    nr_types : int
        Channels of the type (TP) branch including background; 0 leaves the TP branch out.
    type_names : tuple of str
        Names of types 1 .. nr_types-1 (index 0 is background), for outputs users read.
    mpp : float
        Microns per pixel of the images the model is meant for.
    """

    stem_channels: int = 64
    stem_kernel: int = 7
    encoder_widths: tuple[int, int, int, int] = (256, 512, 1024, 2048)
    encoder_depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    bottleneck_ratio: int = 4
    decoder_widths: tuple[int, int, int] = (256, 128, 64)
    dense_units: tuple[int, int] = (8, 4)
    dense_growth: int = 32
    dense_bottleneck: int = 128
    dense_groups: int = 4
    decoder_kernel: int = 3
    nr_types: int = 0
    type_names: tuple[str, ...] = field(default_factory=tuple)
    mpp: float = 0.5

    def __post_init__(self):
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        for name in ("encoder_widths", "encoder_depths", "decoder_widths", "dense_units", "type_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.encoder_widths) != 4 or len(self.encoder_depths) != 4:
            raise PathgenError("encoder_widths and encoder_depths need 4 values (one per stage)")
        if len(self.decoder_widths) != 3 or len(self.dense_units) != 2:
            raise PathgenError("decoder_widths needs 3 values and dense_units 2")
        if any(w % self.bottleneck_ratio for w in self.encoder_widths):
            raise PathgenError("encoder widths must be multiples of bottleneck_ratio")
        if self.nr_types == 1 or self.nr_types < 0:
            raise PathgenError("nr_types must be 0 (no typing) or >= 2 (background + types)")
        if self.decoder_kernel % 2 == 0 or self.stem_kernel % 2 == 0:
            raise PathgenError("kernel sizes must be odd")
        if self.nr_types and self.type_names and len(self.type_names) != self.nr_types - 1:
            raise PathgenError(f"type_names needs {self.nr_types - 1} names (types 1..{self.nr_types - 1})")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "HoVerNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PathgenError(f"unknown HoVer-Net config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


#: Named architectures. ``resnet50`` is the published network; the others are for CPU work.
PRESETS: dict[str, dict] = {
    "resnet50": {},
    "small": dict(stem_channels=16, encoder_widths=(32, 64, 128, 256), encoder_depths=(1, 1, 2, 1),
                  decoder_widths=(32, 32, 16), dense_units=(2, 2), dense_growth=16, dense_bottleneck=32,
                  dense_groups=1),
    "tiny": dict(stem_channels=8, encoder_widths=(16, 32, 64, 128), encoder_depths=(1, 1, 1, 1),
                 decoder_widths=(16, 16, 16), dense_units=(1, 1), dense_growth=8, dense_bottleneck=16,
                 dense_groups=1),
}


def preset_config(name: str, **overrides) -> HoVerNetConfig:
    """Return the :class:`HoVerNetConfig` of a named preset (``tiny``, ``small``, ``resnet50``) with overrides."""
    if name not in PRESETS:
        raise PathgenError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return HoVerNetConfig(**{**PRESETS[name], **overrides})


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=1e-5)


class _ResidualStage(nn.Module):
    """Pre-activation bottleneck units; the stage ends with BN + ReLU, so its first unit has no pre-activation."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, units: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList()
        unit_in = in_ch
        for idx in range(units):
            layers = [] if idx == 0 else [("preact_bn", _bn(unit_in)), ("preact_relu", nn.ReLU(inplace=True))]
            s = stride if idx == 0 else 1
            layers += [
                ("conv1", nn.Conv2d(unit_in, mid_ch, 1, bias=False)),
                ("conv1_bn", _bn(mid_ch)), ("conv1_relu", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(mid_ch, mid_ch, 3, stride=s, padding=1, bias=False)),
                ("conv2_bn", _bn(mid_ch)), ("conv2_relu", nn.ReLU(inplace=True)),
                ("conv3", nn.Conv2d(mid_ch, out_ch, 1, bias=False)),
            ]
            self.units.append(nn.Sequential(OrderedDict(layers)))
            unit_in = out_ch
        self.shortcut = (nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
                         if in_ch != out_ch or stride != 1 else None)
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(out_ch)), ("relu", nn.ReLU(inplace=True))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        for unit in self.units:
            x = unit(x) + shortcut
            shortcut = x
        return self.blk_bna(x)


class Encoder(nn.Module):
    """Pre-activation ResNet: stride-1 stem, four stages at 1, 1/2, 1/4, 1/8 resolution, 1x1 bottleneck."""

    def __init__(self, cfg: HoVerNetConfig):
        super().__init__()
        k = cfg.stem_kernel
        self.conv0 = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(3, cfg.stem_channels, k, padding=k // 2, bias=False)),
            ("bn", _bn(cfg.stem_channels)), ("relu", nn.ReLU(inplace=True))]))
        widths, depths = cfg.encoder_widths, cfg.encoder_depths
        ins = (cfg.stem_channels,) + widths[:3]
        for i in range(4):
            self.add_module(f"d{i}", _ResidualStage(ins[i], widths[i], widths[i] // cfg.bottleneck_ratio,
                                                    depths[i], stride=1 if i == 0 else 2))
        self.conv_bot = nn.Conv2d(widths[3], widths[2], 1, bias=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        d0 = self.d0(self.conv0(x))
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        return [d0, d1, d2, d3]


class _DenseBlock(nn.Module):
    """Each unit (BN-ReLU-1x1, BN-ReLU-kxk) appends ``growth`` channels; ends with BN + ReLU."""

    def __init__(self, in_ch: int, units: int, bottleneck: int, growth: int, kernel: int, groups: int):
        super().__init__()
        self.units = nn.ModuleList()
        ch = in_ch
        for _ in range(units):
            self.units.append(nn.Sequential(OrderedDict([
                ("preact_bn", _bn(ch)), ("preact_relu", nn.ReLU(inplace=True)),
                ("conv1", nn.Conv2d(ch, bottleneck, 1, bias=False)),
                ("conv1_bn", _bn(bottleneck)), ("conv1_relu", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(bottleneck, growth, kernel, padding=kernel // 2, groups=groups, bias=False)),
            ])))
            ch += growth
        self.out_channels = ch
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(ch)), ("relu", nn.ReLU(inplace=True))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = torch.cat([x, unit(x)], dim=1)
        return self.blk_bna(x)


class DecoderBranch(nn.Module):
    """Three up-sampling stages back to full resolution and a 1x1 classifier/regressor."""

    def __init__(self, cfg: HoVerNetConfig, out_ch: int):
        super().__init__()
        w, dw, k = cfg.encoder_widths, cfg.decoder_widths, cfg.decoder_kernel
        for name, in_ch, mid, units, out in (("u3", w[2], dw[0], cfg.dense_units[0], w[1]),
                                             ("u2", w[1], dw[1], cfg.dense_units[1], w[0])):
            dense = _DenseBlock(mid, units, cfg.dense_bottleneck, cfg.dense_growth, k, cfg.dense_groups)
            self.add_module(name, nn.Sequential(OrderedDict([
                ("conva", nn.Conv2d(in_ch, mid, k, padding=k // 2, bias=False)),
                ("dense", dense),
                ("convf", nn.Conv2d(dense.out_channels, out, 1, bias=False))])))
        self.u1 = nn.Sequential(OrderedDict([("conva", nn.Conv2d(w[0], dw[2], k, padding=k // 2, bias=False))]))
        self.u0 = nn.Sequential(OrderedDict([("bn", _bn(dw[2])), ("relu", nn.ReLU(inplace=True)),
                                             ("conv", nn.Conv2d(dw[2], out_ch, 1, bias=True))]))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        d0, d1, d2, d3 = feats
        x = self.u3(_up2(d3) + d2)
        x = self.u2(_up2(x) + d1)
        x = self.u1(_up2(x) + d0)
        return self.u0(x)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class HoVerNet(nn.Module):
    """HoVer-Net with NP, HV and (when ``cfg.nr_types``) TP branches.

    ``forward`` takes images as float (N, 3, H, W) in 0..255 (H and W multiples of 8) and returns a dict of raw
    outputs at the input's size: ``"np"`` logits (N, 2, H, W), ``"hv"`` (N, 2, H, W) horizontal then vertical
    distance maps, and ``"tp"`` logits (N, nr_types, H, W) when typing is on.
    """

    def __init__(self, cfg: HoVerNetConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        branches = OrderedDict([("np", DecoderBranch(cfg, 2)), ("hv", DecoderBranch(cfg, 2))])
        if cfg.nr_types:
            branches["tp"] = DecoderBranch(cfg, cfg.nr_types)
        self.decoder = nn.ModuleDict(branches)
        # Post-processing settings that belong with these weights (tuned on validation data), or None for the
        # reference's; saved and loaded with the checkpoint, used by pathgen.segment.infer.
        self.postprocess = None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the encoder's weights.

        Batch-norm statistics keep updating in training mode while frozen, as in the reference's first phase.
        """
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = images.shape[-2:]
        if h % DOWNSAMPLE or w % DOWNSAMPLE:
            raise ValueError(f"input height and width must be multiples of {DOWNSAMPLE}, got {h}x{w}")
        feats = self.encoder(images.float() / 255.0)
        return {name: branch(feats) for name, branch in self.decoder.items()}


def build_model(cfg: HoVerNetConfig, pretrained: str | os.PathLike | None = None) -> HoVerNet:
    """Create a model and, when ``pretrained`` names a file, load encoder weights from it."""
    model = HoVerNet(cfg)
    if pretrained is not None:
        load_encoder_weights(model, pretrained)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_encoder_weights(model: HoVerNet, path: str | os.PathLike) -> list[str]:
    """Load encoder weights (e.g. ImageNet pre-activation ResNet-50) into ``model`` from a local file.

    Keys may carry an ``encoder.`` prefix or none (the reference's naming); keys outside the encoder (a
    classifier head, decoders) are ignored. Every tensor of the stem and the four stages must be present with
    the right shape; the 1x1 bottleneck (``conv_bot``, not part of an ImageNet ResNet) keeps its initial weights
    when the file lacks it.

    Returns
    -------
    list of str
        The ignored keys of the file.
    """
    state = read_state_dict(path)
    own = model.encoder.state_dict()
    picked, ignored = {}, []
    for key, value in state.items():
        name = key[len("encoder."):] if key.startswith("encoder.") else key
        if name in own:
            if tuple(own[name].shape) != tuple(value.shape):
                raise PathgenError(f"weight {name} has shape {tuple(value.shape)}, the model expects "
                                   f"{tuple(own[name].shape)} (does the preset match the weights?)", path)
            picked[name] = value
        else:
            ignored.append(key)
    missing = [k for k in own if k not in picked and not k.endswith("num_batches_tracked")
               and not k.startswith("conv_bot.")]
    if missing:
        raise PathgenError(f"{len(missing)} encoder weights missing from the file (first: {missing[0]})", path)
    model.encoder.load_state_dict(picked, strict=False)
    return ignored
