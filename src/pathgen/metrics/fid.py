"""FID and KID between two image sets, from features of a pluggable extractor.

**FID** (METHODS.md §6.3): ``‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)`` with μ the feature mean and Σ the
sample covariance (``ddof = 1``, as pytorch-fid). The matrix square root of the symmetric positive semi-definite
``Σa^½ Σb Σa^½`` is taken by eigendecomposition, which has the same trace as pytorch-fid's
``sqrtm(Σa Σb)`` without its complex round-off.

**KID** (METHODS.md §6.4; Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (xᵀy / d + 1)³`` between random subsets (drawn without replacement, ``subset_size`` from each set,
``n_subsets`` times, seeded); reported as mean and standard deviation (``ddof = 0``) over the subsets. When a set
has fewer images than ``subset_size`` the subsets take all of the smaller set's size; the size used is recorded.

**Inception-v3 extractor**: :class:`InceptionV3Pool3` is the FID Inception network (the TF 2015-12-05 graph as
ported by pytorch-fid) written in plain torch, so no torchvision is needed. Its ``state_dict`` keys equal those of
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``; a local copy of that file (read with
``torch.load(weights_only=True)``) or a ``.safetensors`` file with the same tensors can be loaded. Weights cannot be
downloaded here. Preprocessing: RGB uint8 → float in [0, 1] → **bilinear resize to 299 × 299** (torch
``F.interpolate``, ``align_corners=False``, no antialiasing; pytorch-fid's default) → ``2x − 1`` → 2048-d output of
the final average pool (pool3). Every image is used (no dropped partial batch).

Any other torch module (for example a pathgen model's encoder) can serve through :class:`ModuleExtractor`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathgen.errors import PathgenError, require_file
from pathgen.io.checkpoint import read_state_dict, sha256_file

# ---------------------------------------------------------------------------------------------------------------
# Distances from features


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    Parameters
    ----------
    mu1, mu2 : ndarray, shape (D,)
    sigma1, sigma2 : ndarray, shape (D, D), symmetric positive semi-definite

    Returns
    -------
    float (>= 0 up to round-off)
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise PathgenError(f"mean / covariance shapes do not match: {mu1.shape}, {s1.shape}, {mu2.shape}, "
                           f"{s2.shape}")
    root1 = _sqrtm_psd(s1)
    middle = root1 @ s2 @ root1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _check_features(a: np.ndarray, b: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise PathgenError(f"features must be (N, D) arrays of one D, got {x.shape} and {y.shape}")
    if min(x.shape[0], y.shape[0]) < minimum:
        raise PathgenError(f"need at least {minimum} images per set, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def _covariance_factor(x: np.ndarray) -> np.ndarray:
    """A matrix F with ``F Fᵀ = cov(x)`` (ddof 1): the scaled centred data when N <= D, else a Cholesky factor."""
    n, d = x.shape
    centred = x - x.mean(0)
    if n <= d:
        return centred.T / np.sqrt(n - 1)
    cov = centred.T @ centred / (n - 1)
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:  # singular covariance
        return _sqrtm_psd(cov)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets.

    Uses ``tr((Σa^½ Σb Σa^½)^½) = ‖Faᵀ Fb‖_*`` (nuclear norm) for any factors ``Σ = F Fᵀ``, which equals
    :func:`frechet_distance` on the sample means and covariances but needs only a small SVD when there are
    fewer images than feature dimensions.

    Parameters
    ----------
    a, b : ndarray, shape (Na, D), (Nb, D); Na, Nb >= 2

    Returns
    -------
    float
    """
    x, y = _check_features(a, b, 2)
    fa, fb = _covariance_factor(x), _covariance_factor(y)
    tr_covmean = float(np.linalg.svd(fa.T @ fb, compute_uv=False).sum())
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.sum(fa * fa) + np.sum(fb * fb) - 2.0 * tr_covmean)


def mmd2_polynomial_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with kernel ``(xᵀy / d + 1)³`` between two samples of equal size m >= 2.

    ``[Σ_{i≠j} k(xi, xj) + Σ_{i≠j} k(yi, yj)] / (m(m−1)) − 2 Σ_{i,j} k(xi, yj) / m²``.
    """
    m, d = x.shape
    if y.shape != (m, d) or m < 2:
        raise PathgenError(f"MMD needs two (m, d) samples with m >= 2, got {x.shape} and {y.shape}")
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


@dataclass(frozen=True)
class KIDResult:
    """KID mean and std over subsets, with the subset size actually used, the count and the seed."""

    mean: float
    std: float
    subset_size: int
    n_subsets: int
    seed: int


def kid_from_features(a: np.ndarray, b: np.ndarray, subset_size: int = 1000, n_subsets: int = 100,
                      seed: int = 0) -> KIDResult:
    """Kernel Inception Distance: unbiased polynomial MMD² averaged over random subsets.

    Parameters
    ----------
    a, b : ndarray, shape (Na, D), (Nb, D)
    subset_size : int
        Images per subset from each set; capped at min(Na, Nb).
    n_subsets : int
        Number of subsets.
    seed : int
        Seed of the subset draws (numpy ``default_rng``).

    Returns
    -------
    KIDResult
    """
    x, y = _check_features(a, b, 2)
    if subset_size < 2 or n_subsets < 1:
        raise PathgenError(f"KID needs subset_size >= 2 and n_subsets >= 1, got {subset_size}, {n_subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        values[i] = mmd2_polynomial_unbiased(xs, ys)
    return KIDResult(mean=float(values.mean()), std=float(values.std()), subset_size=int(m),
                     n_subsets=int(n_subsets), seed=int(seed))


# ---------------------------------------------------------------------------------------------------------------
# FID Inception-v3 in plain torch. Module names follow the pytorch-fid weights file.


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _same_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    # TF's 3x3 / stride-1 average pool ignores the padding in the mean.
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_same_pool(x, "avg")),
        ], 1)


class _MixedB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = _ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = _ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = _ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = _ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_same_pool(x, "avg"))], 1)


class _MixedD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool  # the FID graph's last block max-pools here (a quirk of that TF graph)
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(s), self.branch3x3_2b(s),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(_same_pool(x, self.pool)),
        ], 1)


class InceptionV3Pool3(nn.Module):
    """FID Inception-v3 returning the 2048-d pool3 features (and the 1008 logits on request).

    Input: float tensor (N, 3, 299, 299) already scaled to [-1, 1]. Use :func:`load_inception` to build it with
    weights and :class:`InceptionExtractor` for the documented preprocessing.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _MixedB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _MixedD(768)
        self.Mixed_7b = _MixedE(1280, pool="avg")
        self.Mixed_7c = _MixedE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool3 = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(pool3) if logits else pool3


def load_inception(path: str | os.PathLike) -> tuple[InceptionV3Pool3, str]:
    """Build :class:`InceptionV3Pool3` with the weights in ``path``; return it (eval mode) and the file's SHA-256.

    Accepts pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or the same tensors as ``.safetensors``.
    A file named like torch hub files (``...-<hex>.pth``) must have a SHA-256 starting with that hex.
    BatchNorm ``num_batches_tracked`` and ``AuxLogits.*`` entries are ignored; any other missing, extra or
    mis-shaped tensor is an error.
    """
    p = require_file(path)
    digest = sha256_file(p)
    named = re.search(r"-([0-9a-f]{8,64})\.(pth|pt|safetensors)$", os.path.basename(p))
    if named and not digest.startswith(named.group(1)):
        raise PathgenError(f"SHA-256 {digest[:16]}... does not match the hash in the file name "
                           f"({named.group(1)}); the file is corrupt or not the named weights", p)
    state = {k: v for k, v in read_state_dict(p).items()
             if not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits.")}
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = InceptionV3Pool3()
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise PathgenError(f"not FID Inception-v3 weights: {len(missing)} tensors missing, {len(extra)} "
                           f"unexpected ({detail})", p)
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if wrong:
        raise PathgenError(f"tensor {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected "
                           f"{tuple(expected[wrong[0]])}", p)
    full = {k: state[k].float().contiguous() if k in state else torch.zeros((), dtype=torch.long)
            for k in model.state_dict()}
    model.load_state_dict(full, strict=True, assign=True)
    return model.eval(), digest


# ---------------------------------------------------------------------------------------------------------------
# Extractors and image sets


class FeatureExtractor(Protocol):
    """Maps a list of (3, H, W) float tensors in [0, 1] to an (N, D) feature tensor."""

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor: ...

    def describe(self) -> dict: ...


class InceptionExtractor:
    """pytorch-fid preprocessing around :class:`InceptionV3Pool3` (see the module docstring)."""

    input_size = 299

    def __init__(self, model: InceptionV3Pool3, weights_path: str | None = None, weights_sha256: str | None = None,
                 device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256

    @classmethod
    def from_weights(cls, path: str | os.PathLike, device: str = "cpu") -> "InceptionExtractor":
        model, digest = load_inception(path)
        return cls(model, os.fspath(path), digest, device)

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        batch = torch.cat([F.interpolate(im[None].to(self.device, torch.float32), size=size, mode="bilinear",
                                         align_corners=False) for im in images])
        return self.model(2.0 * batch - 1.0).cpu()

    def describe(self) -> dict:
        return {
            "name": "inception-v3-fid-pool3",
            "weights": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "feature_dim": 2048,
            "resize": "bilinear to 299x299 (torch F.interpolate, align_corners=False, no antialias), "
                      "then scaled from [0, 1] to [-1, 1]",
        }


class ModuleExtractor:
    """Any torch module as a feature extractor (for example a pathgen encoder).

    Parameters
    ----------
    module : torch.nn.Module
        Takes (N, 3, H, W) float input; a 4-D output is averaged over space, a 3-D output (tokens) over its
        second axis.
    name : str
        Recorded in outputs.
    resize : (int, int), optional
        Bilinear resize (align_corners=False) of each image before the module; without it all images of a batch
        must share one size.
    mean, std : sequence of 3 floats, optional
        Per-channel normalisation ``(x - mean) / std`` applied to [0, 1] input.
    weights_sha256 : str, optional
        Recorded in outputs.
    """

    def __init__(self, module: nn.Module, name: str, resize: tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 weights_sha256: str | None = None, device: str = "cpu"):
        self.module = module.to(device).eval()
        self.name = name
        self.resize = resize
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.weights_sha256 = weights_sha256
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        ims = [im[None].to(self.device, torch.float32) for im in images]
        if self.resize is not None:
            ims = [F.interpolate(im, size=tuple(self.resize), mode="bilinear", align_corners=False) for im in ims]
        elif len({tuple(im.shape) for im in ims}) > 1:
            raise PathgenError(f"images differ in size; give {self.name} a resize")
        x = torch.cat(ims)
        if self.mean is not None:
            x = x - self.mean.to(x.device)
        if self.std is not None:
            x = x / self.std.to(x.device)
        out = self.module(x)
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        elif out.ndim == 3:
            out = out.mean(dim=1)
        return out.reshape(out.shape[0], -1).cpu()

    def describe(self) -> dict:
        return {"name": self.name, "weights_sha256": self.weights_sha256,
                "resize": "none" if self.resize is None else
                f"bilinear to {self.resize[0]}x{self.resize[1]} (align_corners=False)"}


def _image_tensor(path: Path) -> torch.Tensor:
    from pathgen.io.image import read_array

    img = read_array(path)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32) / np.float32(scale))


def extract_features(paths: Sequence[str | os.PathLike], extractor: FeatureExtractor, batch_size: int = 32,
                     description: str = "features") -> np.ndarray:
    """Features of every image file in ``paths`` (RGB; grayscale is repeated to 3 channels, alpha dropped).

    Returns
    -------
    ndarray of float64, shape (N, D)
    """
    from pathgen.progress import progress_bar

    if batch_size < 1:
        raise PathgenError(f"batch size must be >= 1, got {batch_size}")
    chunks = []
    with progress_bar(len(paths), description, unit="images") as bar:
        for start in range(0, len(paths), batch_size):
            group = [Path(p) for p in paths[start:start + batch_size]]
            chunks.append(extractor([_image_tensor(p) for p in group]).double().numpy())
            bar.advance(len(group))
    if not chunks:
        return np.zeros((0, 0))
    return np.concatenate(chunks)


def compare_image_sets(dir_a: str | os.PathLike, dir_b: str | os.PathLike, extractor: FeatureExtractor,
                       batch_size: int = 32, kid_subset_size: int = 1000, kid_subsets: int = 100,
                       seed: int = 0) -> dict:
    """FID and KID between the images of two folders, with the record METHODS.md §6.7 asks for.

    Returns
    -------
    dict
        ``fid``, ``kid``, ``kid_std``, ``kid_subset_size``, ``kid_subsets``, ``kid_seed``, ``n_images_a``,
        ``n_images_b``, ``dir_a``, ``dir_b``, ``extractor`` (name, weights, weights_sha256, resize, ...).
    """
    from pathgen.io.image import list_images

    paths_a, paths_b = list_images(dir_a), list_images(dir_b)
    for d, paths in ((dir_a, paths_a), (dir_b, paths_b)):
        if len(paths) < 2:
            raise PathgenError(f"FID needs at least 2 images per set, found {len(paths)}", d)
    feats_a = extract_features(paths_a, extractor, batch_size, "features A")
    feats_b = extract_features(paths_b, extractor, batch_size, "features B")
    kid = kid_from_features(feats_a, feats_b, kid_subset_size, kid_subsets, seed)
    return {
        "fid": fid_from_features(feats_a, feats_b),
        "kid": kid.mean,
        "kid_std": kid.std,
        "kid_subset_size": kid.subset_size,
        "kid_subsets": kid.n_subsets,
        "kid_seed": kid.seed,
        "n_images_a": len(paths_a),
        "n_images_b": len(paths_b),
        "dir_a": os.fspath(dir_a),
        "dir_b": os.fspath(dir_b),
        "extractor": extractor.describe(),
        "implementation": "pathgen (PyTorch port of the TF FID Inception graph; eigendecomposition square root)",
    }
