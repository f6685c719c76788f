"""Noise and loss: worked numbers (docs/kohya-rules.md 2.9, 2.10, 3.4)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lorakit.config.schema import TrainConfig
from lorakit.errors import ConfigError
from lorakit.models.loader import make_noise_scheduler
from lorakit.train.loss import (debiased_weight, elementwise_loss, huber_c_per_sample, masked_mean,
                                min_snr_weight, per_sample_loss, sample_noise, snr, timestep_weights,
                                v_pred_like_noise_pred_scale, weighted_loss)
from lorakit.train.noise import (NoiseSettings, draw_noise, rescale_zero_terminal_snr, training_scheduler,
                                 validate_noise_config, zero_terminal_snr_scheduler)


def sd_alphas_cumprod() -> list[float]:
    """SD's scaled_linear schedule by hand: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    out, p = [], 1.0
    for i in range(1000):
        p *= 1.0 - (lo + (hi - lo) * i / 999) ** 2
        out.append(p)
    return out


ABAR = sd_alphas_cumprod()
SCHED = make_noise_scheduler(False)


# ---- noise -----------------------------------------------------------------------------

def test_plain_noise_is_the_generator_stream():
    lat = torch.zeros(2, 4, 8, 8)
    noise, t = sample_noise(lat, 1000, [11, 12])
    for i, s in enumerate([11, 12]):
        g = torch.Generator().manual_seed(s)
        assert int(t[i]) == int(torch.randint(0, 1000, (1,), generator=g))
        assert torch.equal(noise[i], torch.randn(4, 8, 8, generator=g))


def test_same_seed_same_noise_whatever_the_batch():
    s = NoiseSettings(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05,
                      multires_noise_iterations=4, multires_noise_discount=0.5, ip_noise_gamma=0.1,
                      ip_noise_gamma_random_strength=True, min_timestep=100, max_timestep=900)
    lat = torch.randn(3, 4, 16, 12, generator=torch.Generator().manual_seed(0))
    full = draw_noise(lat, [5, 6, 7], s, 1000)
    alone = draw_noise(lat[1:2], [6], s, 1000)
    swapped = draw_noise(lat[[2, 0]], [7, 5], s, 1000)
    for a, b in ((full.noise[1], alone.noise[0]), (full.noise[2], swapped.noise[0]),
                 (full.noise[0], swapped.noise[1]), (full.input_noise[1], alone.input_noise[0])):
        assert torch.equal(a, b)
    assert full.timesteps.tolist() == [swapped.timesteps[1].item(), alone.timesteps[0].item(),
                                       swapped.timesteps[0].item()]
    assert not torch.equal(full.noise[0], full.noise[1])


def test_noise_offset_adds_per_channel_constant_from_the_same_generator():
    lat = torch.zeros(2, 4, 8, 8)
    off = draw_noise(lat, [3, 4], NoiseSettings(noise_offset=0.1), 1000).noise
    for i, s in enumerate([3, 4]):
        g = torch.Generator().manual_seed(s)
        torch.randint(0, 1000, (1,), generator=g)
        base = torch.randn(4, 8, 8, generator=g)
        shift = 0.1 * torch.randn(4, generator=g)
        # mean over HW moves by exactly off * randn(C), the next draws of the sample's generator
        torch.testing.assert_close(off[i].mean(dim=(1, 2)) - base.mean(dim=(1, 2)), shift)
        torch.testing.assert_close(off[i] - base, shift[:, None, None].expand(4, 8, 8))


def test_noise_offset_random_strength_scales_by_uniform():
    lat = torch.zeros(1, 4, 8, 8)
    off = draw_noise(lat, [9], NoiseSettings(noise_offset=0.2, noise_offset_random_strength=True), 1000).noise
    g = torch.Generator().manual_seed(9)
    torch.randint(0, 1000, (1,), generator=g)
    base = torch.randn(4, 8, 8, generator=g)
    u = torch.rand(1, generator=g)
    shift = 0.2 * u * torch.randn(4, generator=g)
    assert 0 < u.item() < 1
    torch.testing.assert_close(off[0] - base, shift[:, None, None].expand(4, 8, 8))


def test_adaptive_offset_worked_example():
    # channel means of the latent: 0.5, -2.0, 0.0, 1.0 (constant channels)
    lat = torch.tensor([0.5, -2.0, 0.0, 1.0]).view(1, 4, 1, 1).expand(1, 4, 4, 4).clone()
    s = NoiseSettings(noise_offset=0.1, adaptive_noise_scale=-0.08)
    # off = max(0.1 - 0.08 * |mean|, 0) = [0.06, 0 (clamped from -0.06), 0.1, 0.02]
    want_off = torch.tensor([0.06, 0.0, 0.1, 0.02])
    noise = draw_noise(lat, [21], s, 1000).noise
    g = torch.Generator().manual_seed(21)
    torch.randint(0, 1000, (1,), generator=g)
    base = torch.randn(4, 4, 4, generator=g)
    r = torch.randn(4, generator=g)
    torch.testing.assert_close((noise[0] - base).mean(dim=(1, 2)), want_off * r)
    assert (noise[0, 1] == base[1]).all()  # clamped channel: no offset
    # positive scale: off = 0.1 + 0.5 * |mean| = [0.35, 1.1, 0.1, 0.6]
    noise = draw_noise(lat, [21], NoiseSettings(noise_offset=0.1, adaptive_noise_scale=0.5), 1000).noise
    torch.testing.assert_close((noise[0] - base).mean(dim=(1, 2)), torch.tensor([0.35, 1.1, 0.1, 0.6]) * r)


def interp_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear upsampling (align_corners=False)."""
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)            # (n_in, 1, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0].T


def test_multires_noise_unit_std_and_low_frequency_power():
    """2 levels, discount 1: white noise (the base + level 0, variance 2) plus one bilinear level
    upsampled from int(64/r), r ~ U(2,4). Ratio R = power after 2x2 average pooling / power:
    white 1/4; expected for this noise (2 * 1/4 + E[a^2]) / (2 + E[b^2]) with per-axis
    b = |U|_F^2 / 64 (level power) and a = |P U|_F^2 / 32 (pooled power), P = pairwise mean."""
    B, C, H = 48, 4, 64
    s = NoiseSettings(multires_noise_iterations=2, multires_noise_discount=1.0)
    noise = draw_noise(torch.zeros(B, C, H, H), list(range(100, 100 + B)), s, 1000).noise
    std = noise.reshape(B, -1).std(dim=1)
    torch.testing.assert_close(std, torch.ones(B), atol=1e-5, rtol=0)  # unit std per sample

    pool = torch.zeros(H // 2, H, dtype=torch.float64)
    pool[torch.arange(H // 2), 2 * torch.arange(H // 2)] = 0.5
    pool[torch.arange(H // 2), 2 * torch.arange(H // 2) + 1] = 0.5
    ea2 = eb2 = 0.0
    rs = [2.0 + 2.0 * (k + 0.5) / 4000 for k in range(4000)]   # E over r ~ U(2,4)
    for r in rs:
        u = interp_matrix(H, int(H / r))
        b = (u**2).sum().item() / H
        a = ((pool @ u) ** 2).sum().item() / (H // 2)
        ea2 += a * a / len(rs)
        eb2 += b * b / len(rs)
    expected = (2 * 0.25 + ea2) / (2 + eb2)
    pooled = F.avg_pool2d(noise, 2)
    ratio = (pooled.pow(2).mean(dim=(1, 2, 3)) / noise.pow(2).mean(dim=(1, 2, 3))).mean().item()
    white = torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(1))
    white_ratio = (F.avg_pool2d(white, 2).pow(2).mean() / white.pow(2).mean()).item()
    assert white_ratio == pytest.approx(0.25, rel=0.02)
    assert expected == pytest.approx(0.367, abs=0.01)          # about 1.47x the white-noise ratio
    assert ratio == pytest.approx(expected, rel=0.03), (ratio, expected)


def test_multires_seed_config_is_nearly_white():
    """The seed guides' 8 iterations / discount 0.2: levels i >= 1 carry ~1% of the power, so the
    pooled-power ratio stays close to white noise's 1/4 (at most ~3% above it)."""
    B = 16
    s = NoiseSettings(multires_noise_iterations=8, multires_noise_discount=0.2)
    noise = draw_noise(torch.zeros(B, 4, 64, 64), list(range(B)), s, 1000).noise
    ratio = (F.avg_pool2d(noise, 2).pow(2).mean() / noise.pow(2).mean()).item()
    assert 0.25 < ratio < 0.26


def test_input_perturbation_changes_input_not_target():
    lat = torch.zeros(1, 4, 8, 8)
    plain = draw_noise(lat, [8], NoiseSettings(), 1000)
    ip = draw_noise(lat, [8], NoiseSettings(ip_noise_gamma=0.1), 1000)
    assert torch.equal(ip.noise, plain.noise)
    g = torch.Generator().manual_seed(8)
    torch.randint(0, 1000, (1,), generator=g)
    base = torch.randn(4, 8, 8, generator=g)
    torch.testing.assert_close(ip.input_noise[0], base + 0.1 * torch.randn(4, 8, 8, generator=g))
    rnd = draw_noise(lat, [8], NoiseSettings(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True), 1000)
    g = torch.Generator().manual_seed(8)
    torch.randint(0, 1000, (1,), generator=g)
    torch.randn(4, 8, 8, generator=g)
    u = torch.rand(1, generator=g).item()
    torch.testing.assert_close(rnd.input_noise[0], base + 0.1 * u * torch.randn(4, 8, 8, generator=g))


def test_timesteps_within_min_max():
    lat = torch.zeros(200, 1, 1, 1)
    t = draw_noise(lat, list(range(200)), NoiseSettings(min_timestep=200, max_timestep=203), 1000).timesteps
    assert set(t.tolist()) == {200, 201, 202}
    t = draw_noise(lat, list(range(200)), NoiseSettings(max_timestep=2), 1000).timesteps
    assert set(t.tolist()) == {0, 1}
    t = draw_noise(lat[:3], [1, 2, 3], NoiseSettings(min_timestep=500, max_timestep=500), 1000).timesteps
    assert t.tolist() == [500, 500, 500]
    with pytest.raises(ConfigError):
        draw_noise(lat[:1], [1], NoiseSettings(min_timestep=10, max_timestep=5), 1000)


def test_zero_terminal_snr():
    betas = SCHED.betas
    new = rescale_zero_terminal_snr(betas)
    abar = torch.cumprod(1 - new.double(), 0)
    assert abar[-1].item() == 0.0
    assert new[0].item() == pytest.approx(0.00085, rel=1e-4)   # sqrt(abar_0) is kept
    assert new[-1].item() == 1.0
    z = zero_terminal_snr_scheduler(SCHED)
    assert z.alphas_cumprod[-1].item() == 0.0 and z.config.rescale_betas_zero_snr
    assert z is not SCHED and SCHED.alphas_cumprod[-1].item() == pytest.approx(ABAR[-1], rel=1e-4)
    # sqrt(abar) is the old one shifted by sqrt(abar_T) and scaled back to sqrt(abar_0) at t = 0
    r0, rT = math.sqrt(ABAR[0]), math.sqrt(ABAR[-1])
    want = (math.sqrt(ABAR[500]) - rT) * r0 / (r0 - rT)
    assert math.sqrt(z.alphas_cumprod[500].item()) == pytest.approx(want, rel=1e-5)
    # diffusers' own rescale (an independent oracle) gives the same schedule
    from diffusers import DDPMScheduler
    ref = DDPMScheduler.from_config(SCHED.config, rescale_betas_zero_snr=True)
    torch.testing.assert_close(z.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=1e-5)
    assert training_scheduler(z, True) is z and training_scheduler(SCHED, False) is SCHED
    # v-prediction at t = 999: the input is pure noise and the target is -x0
    x0, eps, t = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5), torch.tensor([999])
    torch.testing.assert_close(z.add_noise(x0, eps, t), eps)
    torch.testing.assert_close(z.get_velocity(x0, eps, t), -x0)


# ---- loss weights ------------------------------------------------------------------------

def test_min_snr_weights_by_hand():
    ts = torch.tensor([0, 100, 500, 999])
    s = snr(SCHED.alphas_cumprod, ts)
    hand = torch.tensor([a / (1 - a) for a in (ABAR[0], ABAR[100], ABAR[500], ABAR[999])], dtype=torch.float64)
    torch.testing.assert_close(s, hand, rtol=1e-4, atol=0)  # abar is float32
    assert s[0].item() == pytest.approx(0.99915 / 0.00085, rel=1e-4)   # 1175.47 (abar in float32)
    eps = min_snr_weight(s, 5.0, v_prediction=False)
    v = min_snr_weight(s, 5.0, v_prediction=True)
    # eps: 5/snr above gamma, 1 below; v: 5/(snr+1) above, snr/(snr+1) = abar below
    torch.testing.assert_close(eps, torch.tensor([5 / 1175.4706, 5 / 8.453894, 1.0, 1.0], dtype=torch.float64),
                               rtol=1e-4, atol=0)
    torch.testing.assert_close(v, torch.tensor([5 * 0.00085, 5 / 9.453894, ABAR[500], ABAR[999]],
                                               dtype=torch.float64), rtol=1e-4, atol=0)
    assert eps[1].item() == pytest.approx(0.591443, rel=1e-4) and v[1].item() == pytest.approx(0.528883, rel=1e-4)
    # the pre-2023-11 bug (docs/kohya-rules.md 3.4): v-pred used min(snr, g)/snr, 1.0 at t = 500 instead of 0.276
    assert v[2].item() == pytest.approx(0.276333, rel=1e-4)
    # zero SNR (zero terminal SNR's last step): eps weight is the limit 1, v weight 0
    zero = torch.tensor([0.0], dtype=torch.float64)
    assert min_snr_weight(zero, 5.0, False).item() == 1.0 and min_snr_weight(zero, 5.0, True).item() == 0.0


def test_debiased_and_v_scale_weights():
    s = torch.tensor([1175.4706, 4.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(debiased_weight(s, False),
                               torch.tensor([1 / math.sqrt(1000), 0.5, 1 / math.sqrt(1e-3)], dtype=torch.float64))
    torch.testing.assert_close(debiased_weight(s, True), torch.tensor([1 / 1001, 0.2, 1 / 1.001], dtype=torch.float64))
    torch.testing.assert_close(v_pred_like_noise_pred_scale(s), torch.tensor([1000 / 1001, 0.8, 0.0],
                                                                              dtype=torch.float64))


def test_timestep_weights_multiply():
    cfg = TrainConfig(min_snr_gamma=5, debiased_estimation_loss=True)
    ts = torch.tensor([100, 500])
    w = timestep_weights(cfg, SCHED.alphas_cumprod, ts, v_prediction=False)
    s100 = ABAR[100] / (1 - ABAR[100])
    s500 = ABAR[500] / (1 - ABAR[500])
    torch.testing.assert_close(w, torch.tensor([5 / s100 / math.sqrt(s100), 1 / math.sqrt(s500)]),
                               rtol=1e-4, atol=0)
    assert timestep_weights(TrainConfig(), SCHED.alphas_cumprod, ts, False).tolist() == [1.0, 1.0]
    cfg = TrainConfig(scale_v_pred_loss_like_noise_pred=True, v_parameterization=True)
    w = timestep_weights(cfg, SCHED.alphas_cumprod, ts, v_prediction=True)
    torch.testing.assert_close(w, torch.tensor([ABAR[100], ABAR[500]], dtype=torch.float32), rtol=1e-4, atol=0)


# ---- elementwise losses ----------------------------------------------------------------

def test_huber_and_smooth_l1_worked_example():
    pred = torch.tensor([0.0, 1.0, 3.0, -2.0]).view(1, 1, 2, 2)
    tgt = torch.zeros(1, 1, 2, 2)
    one = torch.tensor([1.0])
    # c = 1: 2(sqrt(d^2+1) - 1) for both forms
    per = [0.0, 2 * (math.sqrt(2) - 1), 2 * (math.sqrt(10) - 1), 2 * (math.sqrt(5) - 1)]
    assert per_sample_loss(pred, tgt, "huber", one).item() == pytest.approx(sum(per) / 4, rel=1e-6)
    assert per_sample_loss(pred, tgt, "smooth_l1", one).item() == pytest.approx(sum(per) / 4, rel=1e-6)
    assert sum(per) / 4 == pytest.approx(1.906280, abs=1e-6)  # (0 + 0.828427 + 4.324555 + 2.472136) / 4
    # c = 0.1, d = 3: huber 2*0.1*(sqrt(9.01) - 0.1) = 0.58033; smooth_l1 = 5.80333
    c = torch.tensor([0.1])
    assert elementwise_loss(pred, tgt, "huber", c)[0, 0, 1, 0].item() == pytest.approx(0.580333, rel=1e-5)
    assert elementwise_loss(pred, tgt, "smooth_l1", c)[0, 0, 1, 0].item() == pytest.approx(5.80333, rel=1e-5)
    assert per_sample_loss(pred, tgt, "l2").item() == pytest.approx((0 + 1 + 9 + 4) / 4)
    assert per_sample_loss(pred, tgt, "l1").item() == pytest.approx((0 + 1 + 3 + 2) / 4)
    with pytest.raises(ValueError):
        elementwise_loss(pred, tgt, "huber")


def test_huber_schedules():
    ts = torch.tensor([0, 500, 999])
    abar = SCHED.alphas_cumprod
    assert huber_c_per_sample("l2", "snr", 0.1, 1.0, abar, ts) is None
    torch.testing.assert_close(huber_c_per_sample("huber", "constant", 0.1, 2.0, abar, ts), torch.full((3,), 0.2))
    # exponential: exp(t * ln(0.1) / 1000): 1 at t=0, 10^-0.5 at 500
    torch.testing.assert_close(huber_c_per_sample("huber", "exponential", 0.1, 1.0, abar, ts),
                               torch.tensor([1.0, 10 ** -0.5, 10 ** (-0.999)]))
    got = huber_c_per_sample("smooth_l1", "snr", 0.1, 1.0, abar, ts)
    want = [0.9 / (1 + math.sqrt((1 - ABAR[t]) / ABAR[t])) ** 2 + 0.1 for t in (0, 500, 999)]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=0)
    assert got[0].item() == pytest.approx(0.9 / (1 + math.sqrt(0.00085 / 0.99915)) ** 2 + 0.1, rel=1e-5)


def test_masked_mean():
    loss = torch.arange(8.0).view(1, 2, 2, 2)           # channel 0: 0 1 2 3; channel 1: 4 5 6 7
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    # (1*(0+4) + 0.5*(2+6)) / (2 * 1.5) = 8/3
    assert masked_mean(loss, mask).item() == pytest.approx(8 / 3)
    assert masked_mean(loss, mask[:, 0]).item() == pytest.approx(8 / 3)
    assert masked_mean(loss).item() == pytest.approx(3.5)
    assert masked_mean(loss, torch.zeros(1, 1, 2, 2)).item() == 0.0
    with pytest.raises(ValueError):
        masked_mean(loss, torch.ones(1, 1, 4, 4))


def test_weighted_loss_combines_sample_and_timestep_weights():
    pred = torch.ones(2, 1, 2, 2)
    tgt = torch.zeros(2, 1, 2, 2)
    ts = torch.tensor([100, 500])
    cfg = TrainConfig(min_snr_gamma=5)
    out = weighted_loss(cfg, SCHED, pred, tgt, ts, False, sample_weights=torch.tensor([1.0, 0.5]))
    s100 = ABAR[100] / (1 - ABAR[100])
    torch.testing.assert_close(out, torch.tensor([5 / s100, 0.5]), rtol=1e-4, atol=0)


def test_objective_feeds_the_perturbed_input_and_targets_eps_or_v():
    """train/objective.py, shared by the step and validation: the model sees the latents noised with
    input_noise (ip_noise_gamma's eps + gamma * xi), the target is the draw's own eps, or v for
    v-prediction, each by hand: sqrt(abar) x0 + sqrt(1 - abar) n_in and sqrt(abar) eps - sqrt(1 - abar) x0."""
    import contextlib
    from types import SimpleNamespace

    from lorakit.train.noise import NoiseDraw
    from lorakit.train.objective import sample_losses

    g = torch.Generator().manual_seed(3)
    x0, eps, xi = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    ts = torch.tensor([10, 700])
    d = NoiseDraw(noise=eps, input_noise=eps + 0.1 * xi, timesteps=ts)
    a = torch.tensor([ABAR[10], ABAR[700]]).view(2, 1, 1, 1)
    seen = []

    def predict(noisy, timesteps, embeds, added):  # a model that predicts 0 and records its input
        seen.append(noisy)
        return torch.zeros_like(noisy)

    for v in (False, True):
        model = SimpleNamespace(noise_scheduler=SCHED, predict=predict, v_parameterization=v)
        run = SimpleNamespace(model=model, cfg=TrainConfig(), weight_dtype=torch.float32,
                              memory_format=torch.preserve_format,
                              accelerator=SimpleNamespace(autocast=contextlib.nullcontext))
        losses = sample_losses(run, x0, d, torch.zeros(2, 1, 1), None, torch.ones(2), None)
        torch.testing.assert_close(seen[-1], a.sqrt() * x0 + (1 - a).sqrt() * (eps + 0.1 * xi))
        tgt = a.sqrt() * eps - (1 - a).sqrt() * x0 if v else eps
        torch.testing.assert_close(losses, tgt.pow(2).mean(dim=(1, 2, 3)))
        # neither the perturbed noise nor (with v) the plain eps is the target
        assert (losses - (eps + 0.1 * xi).pow(2).mean(dim=(1, 2, 3))).abs().min() > 1e-3


# ---- config ------------------------------------------------------------------------------

def test_validate_noise_config():
    with pytest.raises(ConfigError) as e:
        validate_noise_config(TrainConfig(adaptive_noise_scale=0.01))
    assert e.value.key == "adaptive_noise_scale"
    with pytest.raises(ConfigError) as e:
        validate_noise_config(TrainConfig(scale_v_pred_loss_like_noise_pred=True))
    assert e.value.key == "scale_v_pred_loss_like_noise_pred"
    assert validate_noise_config(TrainConfig(scale_v_pred_loss_like_noise_pred=True), v_parameterization=True) == []
    with pytest.raises(ConfigError):
        validate_noise_config(TrainConfig(min_timestep=600, max_timestep=500))
    assert validate_noise_config(TrainConfig(noise_offset=0.05, adaptive_noise_scale=0.01)) == []
    warns = validate_noise_config(TrainConfig(zero_terminal_snr=True, noise_offset_random_strength=True))
    assert len(warns) == 2 and "noise_offset_random_strength" in warns[0]
    s = NoiseSettings.from_config(TrainConfig(multires_noise_iterations=8, multires_noise_discount=0.2))
    assert (s.multires_noise_iterations, s.multires_noise_discount, s.noise_offset, s.max_timestep) == (8, 0.2, 0, None)


def test_kohya_multires_and_min_snr_map(tmp_path):
    from lorakit.config.load import load_config

    p = tmp_path / "k.json"
    p.write_text('{"noise_offset_type": "Multires", "multires_noise_iterations": 8, "multires_noise_discount": 0.2,'
                 ' "noise_offset": 0.1, "min_snr_gamma": 3, "additional_parameters": '
                 '"--loss_type huber --huber_c 0.2 --zero_terminal_snr --ip_noise_gamma 0.05"}', encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.multires_noise_iterations, cfg.multires_noise_discount, cfg.min_snr_gamma) == (8, 0.2, 3)
    assert cfg.noise_offset == 0  # noise_offset_type Multires: the offset key does not apply
    assert (cfg.loss_type, cfg.huber_c, cfg.zero_terminal_snr, cfg.ip_noise_gamma) == ("huber", 0.2, True, 0.05)
