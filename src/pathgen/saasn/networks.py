"""SAASN networks: a U-Net generator and a PatchGAN discriminator, both with SAGAN self-attention and spectral norm.

METHODS.md §2.2. Generator: pix2pix U-Net with skip connections between encoder level ``i`` and decoder level
``i``; every down step is LeakyReLU(0.2) → conv 4×4 stride 2 → BatchNorm, every up step ReLU → transposed conv 4×4
stride 2 → BatchNorm, and the outermost up step ends in tanh, so images live in [-1, 1]. Discriminator: a 4-block
PatchGAN (three stride-2 blocks, one stride-1 block, then a 1-channel stride-1 conv giving a map of patch
decisions). Spectral norm (one power iteration per training forward) wraps every weight layer, as the text says.

Self-attention (eqs 4.10–4.13): ``q = W_q x``, ``k = W_k x`` with ``C/8`` channels, ``v = W_v x`` with ``C``
channels, ``o_j = Σ_i softmax_i(k_iᵀ q_j) v_i`` (no 1/√d scaling) and ``y = μ o + x`` with ``μ`` learnable and
initialised to 0 — so an untrained attention block is the identity. It sits after a block only where the block's
feature map, at the training size ``image_size``, has at most ``attention_max_tokens`` positions: the attention
matrix is ``N × N`` for ``N = H·W`` positions, which at the first level of a 256-px U-Net is 16 384² per image.
``attention="sdpa"`` computes it with ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels: memory linear in N; q and k are zero-padded to v's width so the fused kernels apply, which leaves
``qᵀk`` unchanged) on maps of more than ``SDPA_MIN_TOKENS`` positions, so inference on large tiles stays within
memory, and with the explicit product on smaller maps, where that is faster; ``"matmul"`` materialises the N × N matrix
(the reference formulation, for checking); ``"none"`` removes attention (ablation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from pathgen.errors import PathgenError

ATTENTION_IMPLS = ("sdpa", "matmul", "none")
#: With ``attention="sdpa"``, maps of at most this many positions still use the explicit product: it is faster
#: there and its N × N matrix needs at most 64 MiB per image.
SDPA_MIN_TOKENS = 4096
NORMS = ("batch", "instance")
COLOUR_SPACES = ("rgb", "od")
#: Intensity floor of the optical-density colour map (``OD ≤ ln 256``).
OD_FLOOR = 1.0 / 256.0


@dataclass
class SAASNConfig:
    """Architecture of the SAASN generators and discriminators (saved with every checkpoint).

    Attributes
    ----------
    image_size : int
        Side of the square training crops in pixels; attention placement is decided at this size.
    ngf : int
        Width of the generator's first level; level ``i`` has ``ngf · min(2**(i-1), g_max_mult)`` channels.
    g_depth : int
        Number of stride-2 down steps of the U-Net (7 for 128-px crops reaches 1×1, as ``unet_128``). Inputs of
        inference are padded to a multiple of ``2**g_depth``.
    g_max_mult : int
        Cap of the generator's width multiplier.
    ndf : int
        Width of the discriminator's first block.
    d_layers : int
        Stride-2 conv blocks of the PatchGAN (3: 70×70 receptive field); one stride-1 block and the output conv
        follow.
    d_max_mult : int
        Cap of the discriminator's width multiplier.
    norm : {"batch", "instance"}
        Normalisation after convs (the text chose BatchNorm).
    stain_discriminator : bool
        pathgen extension, off in the paper's architecture: every discriminator gets a third branch that judges
        an image's stain alone, from the tissue-weighted mean and covariance of its optical densities (nine
        numbers per image, :class:`StainStatistics`), one decision per image. Stain is a property of the whole
        image; a PatchGAN that tells sites apart by their tissue's texture (as it does when the target is one
        slide of another tissue) gives a recolouring generator no gradient towards the target's stain.
    d_norm : {"batch", "instance", "none"} or None
        The discriminators' normalisation; None (default) uses ``norm``, as the text does. ``"none"`` leaves
        spectral norm alone to condition them, as SAGAN's discriminator does. Why it matters for stain: real and
        generated images reach a discriminator in separate batches, and BatchNorm re-centres each batch's
        feature means, which is where a batch-wide colour cast shows: a BatchNorm discriminator learns to tell
        a batch of faded tiles from a batch of well-stained ones several times more slowly (tested), and gives
        the generator little push towards the target's stain.
    spectral_norm : bool
        Spectral normalisation on every conv of every network.
    attention : {"sdpa", "matmul", "none"}
        How self-attention is computed (see the module docstring).
    attention_max_tokens : int
        Attention only after blocks whose feature map at ``image_size`` has at most this many positions.
    init_gain : float
        Standard deviation of the N(0, gain) weight initialisation (0.02 in the reference code).
    full_res_skip : bool
        pathgen extension, off in the paper's architecture: the outermost up step gives ``ngf`` feature maps
        instead of the image, and a head of two 3×3 convs over those maps concatenated with the input image makes
        the output. The pix2pix U-Net's finest skip is already at half resolution, so without this the output's
        fine structure must be regenerated from half-resolution features; with it, the input's pixels are one
        conv away (structure SSIM to the source rises, see ``benchmarks/RESULTS.md``).
    colour_transform : bool
        pathgen extension, off in the paper's architecture: the U-Net's outermost features (``ngf`` maps) are
        pooled 4×, a small head turns them into a per-pixel affine colour map (a 3×3 matrix and an offset, starting
        at the identity), bilinearly upsampled and applied to the input pixels: ``y = A(x)·x + b(x)``. The
        generator then recolours, as a context-aware and spatially smooth stain transform, and cannot redraw
        structure. Excludes ``full_res_skip``.
    colour_space : {"rgb", "od"}
        Where the colour map of ``colour_transform`` acts. ``"rgb"``: ``y = A(x)·x + b(x)`` on the pixels in
        [-1, 1]. ``"od"``: on optical densities ``OD = −ln(I)`` (``I`` the intensity in (0, 1], floored at 1/256),
        ``OD_y = A(x)·OD_x``, with no offset: the Beer–Lambert model under Macenko and Vahadane, where a change of
        stain is a linear map of optical density (a spatially varying one here), so glass (OD 0) stays glass.
    colour_pool : int
        Average-pooling factor of the features the colour head reads (the colour field's resolution: one 3×3
        map per ``colour_pool`` pixels before bilinear upsampling); must divide ``2**g_depth``. Larger is
        smoother.
    pixel_discriminator : bool
        pathgen extension, off in the paper's architecture: every discriminator gets a second, pixel-wise branch
        beside its PatchGAN (pix2pix's "PixelGAN": 1×1 convs without normalisation or spectral norm, a decision
        per pixel, so it judges colour alone and no texture). A colour-transform generator cannot change texture,
        so a PatchGAN that tells the generated source sites from the real target by their texture gives it no
        useful gradient; the pixel branch does. The discriminator then returns both decision maps and the
        adversarial losses of the two add (as the several discriminators of pix2pixHD).
    """

    image_size: int = 128
    ngf: int = 64
    g_depth: int = 7
    g_max_mult: int = 8
    ndf: int = 64
    d_layers: int = 3
    d_max_mult: int = 8
    norm: str = "batch"
    spectral_norm: bool = True
    attention: str = "sdpa"
    attention_max_tokens: int = 1024
    init_gain: float = 0.02
    full_res_skip: bool = False
    colour_transform: bool = False
    colour_space: str = "rgb"
    colour_pool: int = 4
    pixel_discriminator: bool = False
    d_norm: str | None = None
    stain_discriminator: bool = False

    def __post_init__(self):
        if self.full_res_skip and self.colour_transform:
            raise PathgenError("full_res_skip and colour_transform exclude each other")
        if self.attention not in ATTENTION_IMPLS:
            raise PathgenError(f"unknown attention {self.attention!r} (choose {', '.join(ATTENTION_IMPLS)})")
        if self.colour_space not in COLOUR_SPACES:
            raise PathgenError(f"unknown colour space {self.colour_space!r} (choose {', '.join(COLOUR_SPACES)})")
        if self.colour_pool < 1 or (2 ** self.g_depth) % self.colour_pool:
            raise PathgenError(f"colour_pool {self.colour_pool} must divide 2**g_depth ({2 ** self.g_depth})")
        if self.norm not in NORMS:
            raise PathgenError(f"unknown norm {self.norm!r} (choose {', '.join(NORMS)})")
        if self.d_norm is not None and self.d_norm not in (*NORMS, "none"):
            raise PathgenError(f"unknown discriminator norm {self.d_norm!r} (choose {', '.join(NORMS)}, none)")
        for name in ("image_size", "ngf", "g_depth", "g_max_mult", "ndf", "d_layers", "d_max_mult"):
            if int(getattr(self, name)) < 1:
                raise PathgenError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.image_size % (2 ** self.g_depth):
            raise PathgenError(f"image_size {self.image_size} must be a multiple of 2**g_depth "
                               f"({2 ** self.g_depth})")
        if self.image_size < 2 ** (self.d_layers + 2):
            raise PathgenError(f"image_size {self.image_size} too small for a {self.d_layers}-layer PatchGAN")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SAASNConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PathgenError(f"unknown SAASN config keys: {', '.join(unknown)}")
        return cls(**data)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this for the generator."""
        return 2 ** self.g_depth

    def generator_widths(self) -> list[int]:
        """Channels of encoder levels 1..g_depth."""
        return [self.ngf * min(2 ** (i - 1), self.g_max_mult) for i in range(1, self.g_depth + 1)]

    def attends(self, side: int) -> bool:
        """Whether a feature map of ``side × side`` positions (at training size) gets attention."""
        return self.attention != "none" and side * side <= self.attention_max_tokens


#: Named architectures: tiny (tests), small (CPU-trainable, shipped model), paper (reference-code scale).
PRESETS: dict[str, SAASNConfig] = {
    "tiny": SAASNConfig(image_size=32, ngf=8, g_depth=4, g_max_mult=4, ndf=8, d_layers=2, d_max_mult=4,
                        attention_max_tokens=64),
    "small": SAASNConfig(image_size=128, ngf=16, g_depth=7, g_max_mult=8, ndf=16, d_layers=3, d_max_mult=8,
                         attention_max_tokens=256, full_res_skip=True),
    # small, recolouring through a per-pixel affine colour map instead of redrawing the image
    "small-colour": SAASNConfig(image_size=128, ngf=16, g_depth=7, g_max_mult=8, ndf=16, d_layers=3, d_max_mult=8,
                                attention_max_tokens=256, colour_transform=True),
    # small, recolouring through a smooth (16-px grid) linear map of optical density: a learned, context-aware
    # Macenko-style stain transform
    "small-od": SAASNConfig(image_size=128, ngf=16, g_depth=7, g_max_mult=8, ndf=16, d_layers=3, d_max_mult=8,
                            attention_max_tokens=256, colour_transform=True, colour_space="od", colour_pool=16),
    "paper": SAASNConfig(image_size=128, ngf=64, g_depth=7, g_max_mult=8, ndf=64, d_layers=3, d_max_mult=8,
                         attention_max_tokens=1024),
}
# small-od with SAGAN-style discriminators (spectral norm, no BatchNorm), which see a batch's colour cast; and that
# with a pixel-wise (colour-only) or a stain-statistics branch beside each PatchGAN
PRESETS["small-od-sn"] = replace(PRESETS["small-od"], d_norm="none")
PRESETS["small-od-pixel"] = replace(PRESETS["small-od-sn"], pixel_discriminator=True)
PRESETS["small-od-stain"] = replace(PRESETS["small-od-sn"], stain_discriminator=True)


def preset(name: str) -> SAASNConfig:
    """A copy of the named architecture preset."""
    try:
        return SAASNConfig(**asdict(PRESETS[name]))
    except KeyError:
        raise PathgenError(f"unknown preset {name!r} (choose {', '.join(PRESETS)})") from None


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    if not enabled:
        return module
    from torch.nn.utils.parametrizations import spectral_norm

    return spectral_norm(module)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    return nn.InstanceNorm2d(channels, affine=True)


class SelfAttention(nn.Module):
    """SAGAN self-attention over all positions of a feature map, with a residual weight ``mu`` starting at 0.

    Parameters
    ----------
    channels : int
        ``C``; query and key have ``max(C // 8, 1)`` channels, value has ``C``.
    impl : {"sdpa", "matmul"}
    spectral_norm : bool
        Spectral norm on the three 1×1 projections.
    """

    def __init__(self, channels: int, impl: str = "sdpa", spectral_norm: bool = True):
        super().__init__()
        if impl not in ("sdpa", "matmul"):
            raise PathgenError(f"unknown attention implementation {impl!r}")
        reduced = max(channels // 8, 1)
        self.impl = impl
        self.query = _sn(nn.Conv2d(channels, reduced, 1), spectral_norm)
        self.key = _sn(nn.Conv2d(channels, reduced, 1), spectral_norm)
        self.value = _sn(nn.Conv2d(channels, channels, 1), spectral_norm)
        self.mu = nn.Parameter(torch.zeros(1))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output ``o`` (before the residual), shape of ``x``."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key(x).flatten(2).transpose(1, 2)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, N, C)
        if self.impl == "sdpa" and h * w > SDPA_MIN_TOKENS:
            pad = v.shape[-1] - q.shape[-1]
            if pad > 0:  # equal widths let the fused kernels run; zero channels leave qᵀk unchanged
                q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
            o = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]
        else:
            weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # row j: softmax over keys i of k_iᵀ q_j
            o = weights @ v
        return o.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu * self.attend(x) + x


class UNetGenerator(nn.Module):
    """U-Net generator, images in [-1, 1] → images in [-1, 1], shape ``(B, 3, H, W)`` with H, W multiples of
    ``2**g_depth``."""

    def __init__(self, config: SAASNConfig):
        super().__init__()
        self.config = config
        cfg = config
        sn = cfg.spectral_norm
        widths = cfg.generator_widths()
        n = cfg.g_depth
        self.downs = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        for i in range(1, n + 1):
            cin = 3 if i == 1 else widths[i - 2]
            layers: list[nn.Module] = [] if i == 1 else [nn.LeakyReLU(0.2)]
            layers.append(_sn(nn.Conv2d(cin, widths[i - 1], 4, 2, 1, bias=False), sn))
            if 1 < i < n:  # outermost and innermost down steps carry no norm (pix2pix)
                layers.append(_norm(cfg.norm, widths[i - 1]))
            self.downs.append(nn.Sequential(*layers))
            side = cfg.image_size // 2 ** i
            self.down_attn.append(SelfAttention(widths[i - 1], cfg.attention, sn)
                                  if (i < n and cfg.attends(side)) else nn.Identity())
        self.ups = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i in range(n, 0, -1):  # up step i maps level i to level i-1
            cin = widths[i - 1] if i == n else 2 * widths[i - 1]
            image_out = i == 1 and not (cfg.full_res_skip or cfg.colour_transform)
            cout = 3 if image_out else (cfg.ngf if i == 1 else widths[i - 2])
            layers = [nn.ReLU(), _sn(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=image_out), sn)]
            layers.append(nn.Tanh() if image_out else _norm(cfg.norm, cout))
            self.ups.append(nn.Sequential(*layers))
            side = cfg.image_size // 2 ** (i - 1)
            self.up_attn.append(SelfAttention(cout, cfg.attention, sn)
                                if (i > 1 and cfg.attends(side)) else nn.Identity())
        self.head = nn.Sequential(
            _sn(nn.Conv2d(cfg.ngf + 3, cfg.ngf, 3, 1, 1), sn), nn.ReLU(),
            _sn(nn.Conv2d(cfg.ngf, 3, 3, 1, 1), sn), nn.Tanh()) if cfg.full_res_skip else None
        self.colour_head = nn.Sequential(
            _sn(nn.Conv2d(cfg.ngf, cfg.ngf, 3, 1, 1), sn), nn.ReLU(),
            nn.Conv2d(cfg.ngf, 12, 3, 1, 1)) if cfg.colour_transform else None
        init_weights(self, cfg.init_gain)
        if self.colour_head is not None:
            # the last layer starts at zero, so the generator starts as the identity map; it carries no spectral
            # norm (σ of a zero weight is 0), the affine map it produces is bounded by the clamp of the output
            nn.init.zeros_(self.colour_head[-1].weight)
            nn.init.zeros_(self.colour_head[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise PathgenError(f"generator input {tuple(x.shape[-2:])} must be a multiple of {m} on each side")
        skips = []
        h = x
        for down, attn in zip(self.downs, self.down_attn):
            h = attn(down(h))
            skips.append(h)
        skips.pop()  # the innermost level feeds the first up step directly
        for k, (up, attn) in enumerate(zip(self.ups, self.up_attn)):
            if k > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = attn(up(h))
        if self.head is not None:
            h = self.head(torch.cat([F.relu(h), x], dim=1))  # the image itself goes in un-rectified
        elif self.colour_head is not None:
            p = self.colour_head(F.avg_pool2d(F.relu(h), self.config.colour_pool))
            p = F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
            b, _, hh, ww = x.shape
            a = p[:, :9].view(b, 3, 3, hh, ww) + torch.eye(3, device=x.device, dtype=x.dtype).view(1, 3, 3, 1, 1)
            if self.config.colour_space == "od":
                od = optical_density(x)
                h = 2.0 * torch.exp(-torch.einsum("bijhw,bjhw->bihw", a, od)) - 1.0
                h = h.clamp(-1.0, 1.0)
            else:
                h = (torch.einsum("bijhw,bjhw->bihw", a, x) + p[:, 9:]).clamp(-1.0, 1.0)
        return h


def optical_density(x: torch.Tensor) -> torch.Tensor:
    """Optical density of images in [-1, 1] (intensity floored at ``OD_FLOOR``), same shape."""
    return -torch.log(((x + 1.0) * 0.5).clamp(min=OD_FLOOR))


class StainStatistics(nn.Module):
    """A stain critic: ``(B, 3, H, W)`` in [-1, 1] → ``(B, 1, 1, 1)``, one decision per image from its optical
    densities' tissue-weighted mean (3) and covariance (6 upper-triangle entries, ×10 to the means' scale).

    Tissue weight: a sigmoid of the OD norm around 0.15 (Macenko's transparency threshold), soft so that the
    statistics stay differentiable and glass does not count.
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(9, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, 1))
        self.register_buffer("upper", torch.triu_indices(3, 3), persistent=False)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 9)``: tissue-weighted OD mean and 10 × covariance (upper triangle)."""
        od = optical_density(x)
        w = torch.sigmoid((od.norm(dim=1, keepdim=True) - 0.15) / 0.03)
        total = w.sum(dim=(2, 3)).clamp(min=1.0)
        mean = (od * w).sum(dim=(2, 3)) / total
        centred = od - mean[..., None, None]
        cov = torch.einsum("bihw,bjhw->bij", centred * w, centred) / total[..., None]
        return torch.cat([mean, 10.0 * cov[:, self.upper[0], self.upper[1]]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.statistics(x)).view(-1, 1, 1, 1)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: ``(B, 3, H, W)`` in [-1, 1] → ``(B, 1, h, w)`` logits (one decision per patch)."""

    def __init__(self, config: SAASNConfig):
        super().__init__()
        self.config = config
        cfg = config
        sn = cfg.spectral_norm
        norm = cfg.d_norm or cfg.norm
        blocks: list[nn.Module] = [_sn(nn.Conv2d(3, cfg.ndf, 4, 2, 1), sn), nn.LeakyReLU(0.2)]
        width = cfg.ndf
        side = cfg.image_size // 2
        for j in range(1, cfg.d_layers + 1):
            stride = 2 if j < cfg.d_layers else 1
            out = cfg.ndf * min(2 ** j, cfg.d_max_mult)
            blocks += [_sn(nn.Conv2d(width, out, 4, stride, 1, bias=norm == "none"), sn), _norm(norm, out),
                       nn.LeakyReLU(0.2)]
            width = out
            side = side // 2 if stride == 2 else side - 1
            if stride == 2 and cfg.attends(side):
                blocks.append(SelfAttention(width, cfg.attention, sn))
        blocks.append(_sn(nn.Conv2d(width, 1, 4, 1, 1), sn))
        self.net = nn.Sequential(*blocks)
        # PixelGAN branch (SAASNConfig.pixel_discriminator): 1x1 convs, one decision per pixel. No normalisation,
        # which would re-centre each batch's colours (see SAASNConfig.d_norm), and no spectral norm: a 1-Lipschitz
        # map of colours in [-1, 1] cannot give stains a few tenths apart decisions further apart than that, so
        # its verdict, and the generator's gradient, would stay faint (measured: 0.36 vs 0.53 for a faded site
        # and the target). A three-layer colour MLP is stable without it.
        self.pixel = nn.Sequential(
            nn.Conv2d(3, 4 * cfg.ndf, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * cfg.ndf, 4 * cfg.ndf, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * cfg.ndf, 1, 1)) if cfg.pixel_discriminator else None
        self.stain = StainStatistics(4 * cfg.ndf) if cfg.stain_discriminator else None
        init_weights(self, cfg.init_gain)
        if self.pixel is not None:  # PyTorch's default (Kaiming-uniform) start: N(0, 0.02) would mute an MLP
            for m in self.pixel:
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``(B, 1, h, w)`` patch decisions; with extra branches a tuple: the patch map, then the pixel map
        ``(B, 1, H, W)`` and the stain decision ``(B, 1, 1, 1)`` of those configured."""
        if self.pixel is None and self.stain is None:
            return self.net(x)
        return (self.net(x), *(b(x) for b in (self.pixel, self.stain) if b is not None))


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, gain) conv weights, N(1, gain) norm scales, zero biases (pix2pix/CycleGAN initialisation).

    With spectral norm the un-normalised weight (``parametrizations.weight.original``) is initialised; the
    attention residual weights ``mu`` keep their 0.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            with torch.no_grad():
                weight.normal_(0.0, gain)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            with torch.no_grad():
                m.weight.normal_(1.0, gain)
                m.bias.zero_()


def baked_copy(generator: "UNetGenerator") -> "UNetGenerator":
    """A copy of ``generator`` without spectral-norm parametrisations, computing what it computes in eval mode.

    In eval mode a spectral-norm layer divides its weight by the stored σ without iterating; the copy holds those
    normalised weights as plain parameters (and the same BatchNorm statistics), so it needs no σ per call. The
    generator passed in is left as it was. (Removing parametrisations from a deep copy would be wrong: the copy
    shares the parametrised class with the original.)
    """
    from dataclasses import replace

    with torch.random.fork_rng(devices=[]):  # building the copy must not move the caller's random stream
        plain = UNetGenerator(replace(generator.config, spectral_norm=False))
    was_training = generator.training
    generator.eval()
    source = dict(generator.named_modules())
    with torch.no_grad():
        for name, module in plain.named_modules():
            original = source[name]
            for pname, param in module.named_parameters(recurse=False):
                param.copy_(getattr(original, pname))
            for bname, buf in module.named_buffers(recurse=False):
                buf.copy_(getattr(original, bname))
    generator.train(was_training)
    return plain.eval()


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)



class SAASN(nn.Module):
    """The four SAASN networks.

    Names follow the direction of the mapping; the paper's "to-from" names are given for reference:

    * ``g_x2y`` — the normaliser ``G_YX : X → Y`` (source sites to the target stain);
    * ``g_y2x`` — the reverse mapping ``G_XY : Y → X̂`` (into a blended source sub-domain);
    * ``d_x`` — ``D_X``, real source images vs ``g_y2x`` outputs (and, with boundary control, vs real targets);
    * ``d_y`` — ``D_Y``, real target images vs ``g_x2y`` outputs.
    """

    def __init__(self, config: SAASNConfig):
        super().__init__()
        self.config = config
        self.g_x2y = UNetGenerator(config)
        self.g_y2x = UNetGenerator(config)
        self.d_x = PatchDiscriminator(config)
        self.d_y = PatchDiscriminator(config)

    def generators(self) -> list[nn.Module]:
        return [self.g_x2y, self.g_y2x]

    def discriminators(self) -> list[nn.Module]:
        return [self.d_x, self.d_y]
