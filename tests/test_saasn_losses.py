"""SAASN networks, SSIM and loss terms: shapes, hand-computed values, gradients, boundary control."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pathgen.errors import PathgenError
from pathgen.saasn.buffer import ReplayBuffer
from pathgen.saasn.losses import (LossConfig, adversarial_loss, discriminator_losses, dissimilarity,
                                  generator_loss)
from pathgen.saasn.networks import SAASN, PatchDiscriminator, SAASNConfig, SelfAttention, UNetGenerator, preset
from pathgen.saasn.ssim import ssim

torch.set_num_threads(1)


def _batch(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _model(seed: int = 0) -> SAASN:
    torch.manual_seed(seed)
    return SAASN(preset("tiny"))


def test_torch_ssim_equals_metrics_ssim_gray():
    from pathgen.metrics.image import ssim_gray

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 40, 37, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255
    ours = ssim(ta, tb)
    assert ours.shape == (2,)
    for i in range(2):
        assert ours[i].item() == pytest.approx(ssim_gray(a[i], b[i]), abs=1e-9)
    assert ssim(ta, ta).numpy() == pytest.approx([1.0, 1.0], abs=1e-9)


def test_ssim_ignores_colour_but_not_structure():
    # Two images with the same luma but different colours have grayscale SSIM 1.
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    recoloured = torch.stack([gray, gray, gray], dim=1)
    assert ssim(x, recoloured).item() == pytest.approx(1.0, abs=1e-9)
    assert ssim(x, recoloured, grayscale=False).item() < 0.999


def test_attention_starts_as_identity_and_sdpa_matches_matmul():
    torch.manual_seed(0)
    attn = SelfAttention(16, "matmul")
    x = torch.randn(2, 16, 6, 5)
    assert attn.mu.item() == 0.0
    assert torch.equal(attn(x), x)
    assert attn.query.weight.shape[0] == 2 and attn.value.weight.shape[0] == 16  # C/8 and C
    fused = SelfAttention(16, "sdpa")
    fused.load_state_dict(attn.state_dict())
    attn.eval(), fused.eval()
    big = torch.randn(1, 16, 72, 64)  # 4608 positions: above the explicit-product limit, so the fused kernel runs
    assert torch.allclose(attn.attend(big), fused.attend(big), atol=1e-4)
    # hand check of the definition on 2 positions: o_j = sum_i softmax_i(k_i . q_j) v_i
    x2 = torch.randn(1, 16, 1, 2)
    q = attn.query(x2).flatten(2)[0].T
    k = attn.key(x2).flatten(2)[0].T
    v = attn.value(x2).flatten(2)[0].T
    w = torch.softmax(q @ k.T, dim=1)
    assert torch.allclose(attn.attend(x2).flatten(2)[0].T, w @ v, atol=1e-6)


def test_network_shapes_and_spectral_norm():
    cfg = preset("tiny")
    g, d = UNetGenerator(cfg), PatchDiscriminator(cfg)
    x = _batch(0)
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    assert d(x).shape == (2, 1, 6, 6)
    assert all(hasattr(m, "parametrizations") for m in g.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(PathgenError):
        g(torch.zeros(1, 3, 40, 40))  # not a multiple of 2**4
    with pytest.raises(PathgenError):
        SAASNConfig(attention="flash")


def test_full_resolution_skip_head_sees_input_pixels_and_bakes_exactly():
    """With ``full_res_skip`` a one-pixel change of the input reaches the output at that pixel through the head
    (the paper's U-Net sees the input only through stride-2 convs), gradients reach every layer, and the
    spectral-norm-free copy computes the same; configs saved without the key load as the paper's architecture."""
    from dataclasses import replace

    from pathgen.saasn.networks import baked_copy

    torch.manual_seed(0)
    cfg = replace(preset("tiny"), full_res_skip=True)
    g = UNetGenerator(cfg)  # training mode: spectral norm runs its power iteration
    x = _batch(1)
    x.requires_grad_(True)
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    y.sum().backward()
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)
    assert x.grad[:, :, 5, 7].abs().sum() > 0
    g.eval()
    with torch.no_grad():
        torch.testing.assert_close(baked_copy(g)(x), g(x))
    assert SAASNConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "full_res_skip"}).full_res_skip \
        is False
    assert UNetGenerator(preset("tiny")).head is None


def test_colour_head_starts_at_identity_and_only_the_adversarial_term_pulls_it_there():
    """The colour-transform generator is the identity at initialisation; the adversarial term reaches its zero-
    initialised last layer, while every cycle / SSIM / identity term is at its minimum (zero gradient); after one
    generator is moved off the identity, the L1 cycle gradient on its head is far larger than the adversarial one
    (the reason for ``TrainConfig.cycle_warmup_steps``)."""
    from dataclasses import replace

    torch.manual_seed(0)
    net = SAASN(replace(preset("tiny"), colour_transform=True))
    x, y = _batch(1, 2), _batch(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(net.g_x2y(x), x)
    cfg = LossConfig()
    _, terms, _ = generator_loss(net, x, y, cfg)
    last = net.g_x2y.colour_head[-1].weight

    def grad_norm(value):
        g = torch.autograd.grad(value, last, retain_graph=True, allow_unused=True)[0]
        return 0.0 if g is None else g.norm().item()

    assert grad_norm(terms["adv_g"]) > 0
    for name in ("cycle", "identity", "scycle", "dssim"):
        assert grad_norm(terms[name]) < 1e-5, name
    with torch.no_grad():
        net.g_x2y.colour_head[-1].bias[9:].fill_(0.05)  # a small colour offset in one generator only
    _, terms, _ = generator_loss(net, x, y, cfg)
    assert grad_norm(cfg.alpha * terms["cycle"]) > 10 * grad_norm(terms["adv_g"])


def test_optical_density_colour_map_keeps_glass_and_bakes_exactly():
    """``colour_space="od"``: the generator starts as the identity (up to the 1/256 intensity floor), any learned
    map leaves white glass white (a linear map of OD has no offset), it recolours tissue, and the
    spectral-norm-free copy computes the same; bad colour settings are refused."""
    from dataclasses import replace

    from pathgen.saasn.networks import baked_copy

    torch.manual_seed(0)
    g = UNetGenerator(replace(preset("tiny"), colour_transform=True, colour_space="od", colour_pool=8))
    x = _batch(3, 2)
    x[:, :, :8, :8] = 1.0  # a patch of glass
    with torch.no_grad():
        assert (g(x) - x).abs().max().item() <= 2 / 256 + 1e-6
        g.colour_head[-1].bias.copy_(torch.linspace(-0.3, 0.4, 12))
        y = g(x)
    assert torch.equal(y[:, :, :8, :8], x[:, :, :8, :8])
    assert (y - x).abs().mean().item() > 0.01
    g.eval()
    with torch.no_grad():
        torch.testing.assert_close(baked_copy(g)(x), g(x))
    with pytest.raises(PathgenError):
        SAASNConfig(colour_transform=True, colour_space="lab")
    with pytest.raises(PathgenError):
        SAASNConfig(colour_transform=True, colour_pool=3)
    assert SAASNConfig.from_dict({k: v for k, v in preset("small-colour").to_dict().items()
                                  if k not in ("colour_space", "colour_pool")}) == preset("small-colour")


def test_adversarial_loss_hand_values():
    half = torch.full((2, 1, 3, 3), 0.5)
    assert adversarial_loss(half, True, "lsgan").item() == pytest.approx(0.25)
    assert adversarial_loss(half, False, "lsgan").item() == pytest.approx(0.25)
    zero = torch.zeros(2, 1, 3, 3)
    assert adversarial_loss(zero, True, "bce").item() == pytest.approx(math.log(2))
    ones = torch.ones(1, 1, 2, 2)
    assert adversarial_loss(ones, True, "lsgan").item() == 0.0
    assert adversarial_loss(ones, False, "lsgan").item() == 1.0
    with pytest.raises(PathgenError):
        adversarial_loss(ones, True, "wgan")


def test_dissimilarity_is_half_one_minus_ssim():
    a = _batch(1)
    assert dissimilarity(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = _batch(2)
    expect = 0.5 * (1 - ssim((a + 1) / 2, (b + 1) / 2)).mean()
    assert dissimilarity(a, b).item() == pytest.approx(expect.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["lsgan", "bce"])
def test_every_generator_term_has_shape_value_and_gradient(kind):
    model = _model()
    x, y = _batch(1), _batch(2)
    cfg = LossConfig(adversarial=kind)
    total, terms, outs = generator_loss(model, x, y, cfg)
    assert total.shape == () and set(terms) == {"adv_g", "cycle", "scycle", "dssim", "identity"}
    assert outs.fake_y.shape == x.shape and outs.rec_y.shape == y.shape
    weighted = terms["adv_g"] + 10 * terms["cycle"] + 10 * terms["scycle"] + 10 * terms["dssim"] \
        + 0.1 * terms["identity"]
    assert total.item() == pytest.approx(weighted.item(), rel=1e-6)
    gens = [p for g in model.generators() for p in g.parameters()]
    for name, term in terms.items():
        assert term.shape == () and torch.isfinite(term)
        grads = torch.autograd.grad(term, gens, retain_graph=True, allow_unused=True)
        norm = sum(float(g.abs().sum()) for g in grads if g is not None)
        assert norm > 0, f"{name} gives the generators no gradient"
    loss_dx, loss_dy, dterms = discriminator_losses(model, x, y, outs.fake_x, outs.fake_y, cfg)
    for loss, disc in ((loss_dx, model.d_x), (loss_dy, model.d_y)):
        assert loss.shape == () and torch.isfinite(loss)
        grads = torch.autograd.grad(loss, list(disc.parameters()), retain_graph=True)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    # the fakes are detached: discriminator losses give the generators nothing
    assert all(g is None for g in torch.autograd.grad(loss_dx + loss_dy, gens, allow_unused=True))


def test_switched_off_terms_are_zero():
    model = _model()
    total, terms, _ = generator_loss(model, _batch(1), _batch(2), LossConfig.cyclegan())
    assert terms["scycle"].item() == 0.0 and terms["dssim"].item() == 0.0
    assert total.item() == pytest.approx((terms["adv_g"] + 10 * terms["cycle"] + 0.1 * terms["identity"]).item(),
                                         rel=1e-6)


def _grads(loss, params):
    return [g.clone() for g in torch.autograd.grad(loss, params, allow_unused=False)]


def test_boundary_control_changes_the_dx_update_and_nothing_else():
    base = _model(5)
    x, y = _batch(3), _batch(4)
    with torch.no_grad():
        fake_x, fake_y = base.g_y2x(y), base.g_x2y(x)
    results = {}
    for switch in (True, False):
        cfg = LossConfig(boundary_control=switch)
        m = copy.deepcopy(base)  # same weights, power-iteration vectors and BatchNorm statistics
        loss_dx, loss_dy, terms = discriminator_losses(m, x, y, fake_x, fake_y, cfg)
        mg = copy.deepcopy(base)
        g_total, _, _ = generator_loss(mg, x, y, cfg)
        results[switch] = {
            "dx": _grads(loss_dx, list(m.d_x.parameters())),
            "dy": _grads(loss_dy, list(m.d_y.parameters())),
            "g": _grads(g_total, [p for g in mg.generators() for p in g.parameters()]),
            "boundary": terms["boundary"].item(), "loss_dx": loss_dx.item(),
        }
    on, off = results[True], results[False]
    assert off["boundary"] == 0.0 and on["boundary"] > 0.0
    # LSGAN boundary term by hand: mean of D_X(y)^2 (real targets carry the "fake" label 0)
    d_x_of_y = copy.deepcopy(base).d_x(y)
    assert on["boundary"] == pytest.approx(float((d_x_of_y.detach() ** 2).mean()), rel=1e-5)
    assert on["loss_dx"] == pytest.approx(off["loss_dx"] + 0.5 * on["boundary"], rel=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(on["dx"], off["dx"]))
    assert all(torch.equal(a, b) for a, b in zip(on["dy"], off["dy"]))
    assert all(torch.equal(a, b) for a, b in zip(on["g"], off["g"]))


def test_replay_buffer_rule_and_state_round_trip():
    buf = ReplayBuffer(3, seed=0)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(buf.query(first), first)  # filling: returned as given
    assert len(buf) == 3
    new = torch.full((8, 1, 1, 1), 9.0)
    out = buf.query(new)
    assert out.shape == new.shape
    values = set(out.flatten().tolist())
    assert values <= {0.0, 1.0, 2.0, 9.0} and 9.0 in values and len(buf) == 3
    tensors, state = buf.state()
    again = ReplayBuffer(3, seed=123)
    again.load_state(tensors, state)
    probe = torch.full((6, 1, 1, 1), 7.0)
    assert torch.equal(buf.query(probe), again.query(probe))
    assert torch.equal(ReplayBuffer(0).query(probe), probe)


def _pixel_model(seed: int = 0) -> SAASN:
    from dataclasses import replace

    torch.manual_seed(seed)
    return SAASN(replace(preset("tiny"), pixel_discriminator=True))


def test_pixel_branch_decides_per_pixel_from_colour_alone():
    from dataclasses import replace

    d = PatchDiscriminator(replace(preset("tiny"), pixel_discriminator=True)).eval()
    x = _batch(0)
    patch, pixel = d(x)
    assert patch.shape == (2, 1, 6, 6) and pixel.shape == (2, 1, 32, 32)
    # shuffling the pixels shuffles the pixel decisions the same way: no neighbourhood, no texture
    perm = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(1))
    shuffled = x.flatten(2)[..., perm].reshape(x.shape)
    _, pixel_shuffled = d(shuffled)
    torch.testing.assert_close(pixel_shuffled.flatten(2), pixel.flatten(2)[..., perm])
    # and the same colour gets the same decision wherever it is
    flat = torch.ones(1, 3, 32, 32) * torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(d(flat)[1], d(flat)[1][0, 0, 0, 0])
    assert PatchDiscriminator(preset("tiny")).pixel is None  # off in the paper's architecture


def test_adversarial_loss_of_several_maps_adds_them():
    patch, pixel = torch.full((2, 1, 3, 3), 0.5), torch.zeros(2, 1, 8, 8)
    assert adversarial_loss((patch, pixel), True, "lsgan").item() == pytest.approx(0.25 + 1.0)
    assert adversarial_loss((patch, pixel), False, "lsgan").item() == pytest.approx(0.25 + 0.0)


def test_pixel_branch_gets_gradients_and_boundary_control_covers_it():
    model = _pixel_model(3)
    x, y = _batch(1), _batch(2)
    total, terms, outs = generator_loss(model, x, y, LossConfig())
    assert torch.isfinite(total)
    loss_dx, loss_dy, dterms = discriminator_losses(model, x, y, outs.fake_x, outs.fake_y, LossConfig())
    for loss, disc in ((loss_dx, model.d_x), (loss_dy, model.d_y)):
        grads = torch.autograd.grad(loss, list(disc.pixel.parameters()), retain_graph=True)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    # LSGAN boundary term by hand, over both decision maps of D_X(y) (the spectral norm's power iteration has
    # moved on by one step since, hence the tolerance)
    patch, pixel = copy.deepcopy(model).d_x(y)
    expect = float((patch.detach() ** 2).mean() + (pixel.detach() ** 2).mean())
    assert dterms["boundary"].item() == pytest.approx(expect, rel=1e-3)
    assert float((pixel.detach() ** 2).mean()) > 0  # the pixel map counts


def _learn_to_tell_casts_apart(cfg, steps: int = 60) -> float:
    """Train a discriminator (LSGAN, Adam) on "real" batches and on the same tissue under a colour cast, each in
    its own batch as in SAASN's D step; return the last 10 steps' mean loss (0.25 = cannot tell them apart)."""
    torch.manual_seed(0)
    d = PatchDiscriminator(cfg).train()
    opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    cast = torch.tensor([0.3, -0.25, 0.15]).view(1, 3, 1, 1)
    losses = []
    for step in range(steps):
        real = _batch(100 + step, n=4) * 0.5
        fake = _batch(1000 + step, n=4) * 0.5 + cast  # other tissue, other stain
        loss = 0.5 * (adversarial_loss(d(real), True) + adversarial_loss(d(fake), False))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses[-10:]))


def test_batchnorm_discriminator_is_slow_to_tell_batches_apart_by_their_colour_cast():
    """Real and generated images reach a discriminator in separate batches. A BatchNorm PatchGAN re-centres each
    batch, which hides most of a stain cast common to the batch; without BatchNorm (``d_norm="none"``, SAGAN)
    the same discriminator learns the difference several times faster."""
    from dataclasses import replace

    tiny = preset("tiny")
    batchnorm = _learn_to_tell_casts_apart(tiny)
    plain = _learn_to_tell_casts_apart(replace(tiny, d_norm="none"))
    assert plain < 0.05 and batchnorm > 3 * plain
    with pytest.raises(PathgenError):
        SAASNConfig(d_norm="layer")


def test_stain_branch_reads_tissue_od_statistics_only():
    from dataclasses import replace

    from pathgen.saasn.networks import StainStatistics

    critic = StainStatistics(16)
    od = torch.tensor([0.6, 1.0, 0.5])
    stained = 2 * torch.exp(-od) - 1  # one stain colour, in [-1, 1]
    x = torch.full((1, 3, 32, 32), 0.99)  # glass (OD 0.005)
    x[..., :, :16] = stained.view(1, 3, 1, 1)  # left half stained
    stats = critic.statistics(x)[0]
    torch.testing.assert_close(stats[:3], od, atol=0, rtol=0.02)  # glass (weight < 1 %) barely dilutes the mean
    assert stats[3:].abs().max() < 0.1  # one colour: (almost) no covariance; glass weighs < 1 %
    two = x.clone()
    two[..., :, 8:16] = (2 * torch.exp(-od / 2) - 1).view(1, 3, 1, 1)  # a second, paler stain in the tissue
    assert critic.statistics(two)[0, 3:].abs().max() > 0.4
    # one decision per image, blind to where the pixels are
    d = PatchDiscriminator(replace(preset("tiny"), stain_discriminator=True, d_norm="none"))
    y = _batch(3)
    patch, stain = d(y)
    assert patch.shape == (2, 1, 6, 6) and stain.shape == (2, 1, 1, 1)
    perm = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d(y.flatten(2)[..., perm].reshape(y.shape))[1], stain)
    # both extra branches together: patch, pixel, stain
    both = PatchDiscriminator(replace(preset("tiny"), stain_discriminator=True, pixel_discriminator=True))(y)
    assert [t.shape[-1] for t in both] == [6, 32, 1]
