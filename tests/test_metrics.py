"""The quality metrics pinned to independent references: SSIM against a numpy Gaussian SSIM, PSNR and the moving
mask on hand-made frames."""
import math
import re

import numpy as np
import pytest

from worldcache.quality import format_scores, frame_scores, heldout_windows, moving_mask, moving_psnr, psnr, ssim


# --- references --------------------------------------------------------------------------------------------------
def ssim_reference(pred, target) -> float:
    """Gaussian SSIM (11 taps, sigma 1.5, K1 0.01, K2 0.03, data range 1 for uint8 / 255), each image reflect-padded
    by 5 so the map keeps the image's size; the mean over every image, channel and pixel (images of one size)."""
    x = np.asarray(pred, np.float64).reshape(-1, *np.shape(pred)[-3:]) / 255
    y = np.asarray(target, np.float64).reshape(-1, *np.shape(target)[-3:]) / 255
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    g /= g.sum()

    def blur(a):  # (N, H, W, C): reflect-pad H and W by 5, then the separable 11-tap filter, 'valid'
        a = np.pad(a, ((0, 0), (5, 5), (5, 5), (0, 0)), mode="reflect")
        a = sum(g[i] * a[:, i:i + a.shape[1] - 10] for i in range(11))
        return sum(g[i] * a[:, :, i:i + a.shape[2] - 10] for i in range(11))

    mx, my = blur(x), blur(y)
    vx, vy = np.maximum(blur(x * x) - mx ** 2, 0), np.maximum(blur(y * y) - my ** 2, 0)
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean())


# --- PSNR, SSIM, the moving mask ----------------------------------------------------------------------------------
def test_ssim_is_the_gaussian_ssim_of_frames_in_0_1():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, 3, 16, 20, 3)).astype(np.uint8)  # windows (N, T, H, W, 3)
    pred = np.clip(real.astype(int) + rng.integers(-60, 61, real.shape), 0, 255).astype(np.uint8)
    want = ssim_reference(pred, real)
    assert 0.2 < want < 0.95  # far from both ends, where a wrong data range or constant would still land
    assert ssim(pred, real) == pytest.approx(want, abs=2e-6)
    assert ssim(real, real) == pytest.approx(1.0, abs=1e-6)


def test_frame_scores_full_frame_psnr_and_ssim_of_the_model_and_of_repeat_last():
    # window 0 starts black, window 1 at 200: each window's moving pixels and repeat-last come from its own start
    start = np.stack([np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 200, np.uint8)])
    real = np.zeros((2, 2, 16, 16, 3), np.uint8)
    real[0, 0] = 102                      # repeat-last is 0.4 off everywhere: MSE 0.16; every pixel moves
    real[0, 1, :8] = 51                   # 0.2 off on half the frame: MSE 0.02; 153 levels > 30: half moves
    real[1] = 200                         # window 1: still, but for 32 pixels 100 darker in its frame 1
    real[1, 1, :2] = 100
    pred = real.copy()
    pred[0, 0] += 51                      # 0.2 off everywhere: MSE 0.04
    pred[0, 1, :4] += 51                  # 0.2 off on a quarter: MSE 0.01; on half the moving values: 0.02
    s = frame_scores(pred, real, start)   # window 1 predicted exactly
    exact = lambda values: 10 * math.log10(values * 255 ** 2)  # noqa: E731  (an exact frame's floor)
    db = lambda mse: 10 * math.log10(1 / mse)  # noqa: E731
    assert s["psnr"] == pytest.approx((db(0.04) + db(0.01) + 2 * exact(768)) / 4, abs=1e-9)
    assert s["psnr_repeat_last"] == pytest.approx(
        (db(0.16) + db(0.02) + exact(768) + db(96 / 768 * (100 / 255) ** 2)) / 4, abs=1e-9)
    # moving region: window 1's frame 0 has no moving pixel (left out), its frame 1 has 32 (96 values)
    assert s["psnr_moving"] == pytest.approx((db(0.04) + db(0.02) + exact(96)) / 3, abs=1e-9)
    assert s["psnr_moving_repeat_last"] == pytest.approx((db(0.16) + db(0.04) + db((100 / 255) ** 2)) / 3, abs=1e-9)
    assert s["moving_pixel_share"] == (256 + 128 + 0 + 32) / 1024
    # flat frames: float32 cancellation in E[x^2] - mu^2 (against C2 = 9e-4) moves torchmetrics' SSIM by ~2e-4
    assert s["ssim"] == pytest.approx(ssim_reference(pred, real), abs=1e-3)
    rep = np.repeat(start[:, None], 2, axis=1)
    assert s["ssim_repeat_last"] == pytest.approx(ssim_reference(rep, real), abs=1e-3)
    assert abs(ssim_reference(pred, real) - ssim_reference(rep, real)) > 0.1  # the two are told apart


def test_moving_mask_threshold_is_more_than_30_levels_summed_over_rgb():
    start = np.full((1, 6, 3), 100, np.uint8)
    real = start[None].astype(int) + [[[[10, 10, 10], [10, 10, 11], [31, 0, 0], [-10, -10, -11], [0, -30, 0],
                                        [16, -15, 0]]]]  # sums of |diff|: 30, 31, 31, 31, 30, 31
    np.testing.assert_array_equal(moving_mask(real.astype(np.uint8), start)[0, 0],
                                  [False, True, True, True, False, True])


def test_moving_psnr_floors_each_exact_frame_by_its_own_moving_values():
    # two exact frames with 1 and 4 moving pixels: each counts one of its 3 and 12 values one level off
    start = np.zeros((4, 4, 3), np.uint8)
    real = np.zeros((2, 4, 4, 3), np.uint8)
    real[0, 0, 0] = 50
    real[1, :2, :2] = 50
    want = (10 * math.log10(3 * 255 ** 2) + 10 * math.log10(12 * 255 ** 2)) / 2
    assert moving_psnr(real, real, start) == pytest.approx(want, abs=1e-9)
    assert psnr(real[:1], start[None]) == pytest.approx(10 * math.log10(48 / 3 * (255 / 50) ** 2), abs=1e-9)


def test_heldout_windows_keep_windows_that_move_at_least_the_threshold_from_their_start():
    frames = lambda *v: np.array(v, np.uint8)[:, None, None, None] + np.zeros((1, 2, 2, 3), np.uint8)  # noqa: E731
    acts = np.zeros((8, 3), np.float32)
    eps = [  # windows of 4 at t = 0 and 4, moving=2: kept where the mean |real - start| >= 2
        {"obs": frames(100, 98, 98, 98, 98, 97, 97, 97, 97), "actions": acts},  # 2 (kept); 1 darker (skipped)
        {"obs": frames(0, 0, 0, 0, 8, 0, 0, 0, 0), "actions": acts + 1},  # 2 (kept); 8 from start 8 (kept)
    ]
    starts, a, reals, states = heldout_windows(eps, 4, moving=2.0)
    assert starts[:, 0, 0, 0].tolist() == [100, 0, 8] and a[:, 0, 0].tolist() == [0, 1, 1]
    assert reals[:, :, 0, 0, 0].tolist() == [[98] * 4, [0, 0, 0, 8], [0] * 4]
    assert states is None  # no episode carries its states
    assert heldout_windows(eps, 4, max_windows=2, moving=2.0)[0][:, 0, 0, 0].tolist() == [100, 0]
    with pytest.raises(ValueError, match="no held-out window"):
        heldout_windows(eps[:1], 4, moving=2.5)


def test_format_scores_rows_show_each_predictors_figures():
    r = {"frames": 16, "psnr": 21.234, "ssim": 0.8123, "psnr_moving": 15.5, "psnr_repeat_last": 19.0,
         "ssim_repeat_last": 0.7, "psnr_moving_repeat_last": 9.25, "moving_pixel_share": 0.125}
    lines = format_scores({"windows": 2, "chunk": 8, "horizons": {"1": r}}).splitlines()
    nums = lambda line: [float(v) for v in re.findall(r"-?\d+\.\d+", line)]  # noqa: E731
    model = next(line for line in lines if " model " in line)
    repeat = next(line for line in lines if "repeat-last" in line)
    assert nums(model) == [21.23, 0.812, 15.50, 12.5] and nums(repeat) == [19.00, 0.700, 9.25, 12.5]
