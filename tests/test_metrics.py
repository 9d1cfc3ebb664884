"""The quality and fidelity metrics pinned to independent references: SSIM against a numpy Gaussian SSIM, PSNR and
the moving mask on hand-made frames, Spearman (ties, NaN) against average-rank Pearson, the bootstrap's interval and
paired comparison against a per-draw loop, and summarize / pool_results / the tables on hand-made returns."""
import math
import re
import warnings

import numpy as np
import pytest
from scipy.stats import rankdata, t as student_t

from worldcache import fidelity
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


def rho_reference(a, b) -> float:
    """Spearman: Pearson of the average ranks (ties share the mean of their places); NaN where a side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / den) if den else float("nan")


def bootstrap_reference(real, wm, draws, seed) -> np.ndarray:
    """Draw by draw: one resample of the episode columns for every policy, then Spearman of the policies' means."""
    idx = np.random.default_rng(seed).integers(0, real.shape[1], (draws, real.shape[1]))
    return np.array([rho_reference(real[:, i].mean(1), wm[:, i].mean(1)) for i in idx])


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


# --- Spearman and its bootstrap -----------------------------------------------------------------------------------
def test_spearman_ranks_ties_by_their_average_place_and_undefined_is_none():
    a, b = [1.0, 2, 2, 4, 5], [2.0, 1, 3, 3, 6]
    # average ranks (1, 2.5, 2.5, 4, 5) and (2, 1, 3.5, 3.5, 5), centred on 3: rho = 7.25 / sqrt(9.5 * 9.5)
    rho = 7.25 / 9.5
    p = 2 * student_t.sf(rho * math.sqrt(3 / (1 - rho ** 2)), 3)  # t test with n - 2 = 3 degrees of freedom
    got = fidelity._spearman(a, b)
    assert got == (pytest.approx(rho, abs=1e-12), pytest.approx(p, rel=1e-9))
    assert fidelity._spearman([1.0, 2, 3], [5.0, 5, 5]) == (None, None)  # every policy tied
    assert fidelity._spearman([1.0, 2, 3], [1.0, np.nan, 3]) == (None, None)  # a non-finite return


def test_spearman_draws_rank_tied_means_by_their_average_place():
    # integer returns on 3 episodes: many resamples tie two policies' means, some tie all of one side (NaN)
    real = np.array([[0.0, 1, 1], [1, 0, 1], [1, 1, 0], [2, 0, 0]])
    wm = np.array([[0.0, 1, 0], [1, 1, 1], [0, 1, 1], [1, 0, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = bootstrap_reference(real, wm, 300, seed=4)
    means = real[:, np.random.default_rng(4).integers(0, 3, (300, 3))].mean(-1).T  # (draws, policies)
    partly_tied = [len(set(m)) not in (1, len(m)) for m in means]
    assert np.isnan(want).any() and any(partly_tied)  # ties within a draw, and draws tied throughout
    np.testing.assert_allclose(fidelity.spearman_draws(real, wm, draws=300, seed=4), want, rtol=1e-12, atol=1e-12)


def test_interval_is_the_5th_and_95th_percentile_of_the_finite_draws():
    draws = np.r_[np.nan, np.arange(101.0)[::-1], np.nan, np.inf]
    assert fidelity._interval(draws) == [5.0, 95.0]
    assert fidelity._interval(np.array([0.0, 1.0])) == [pytest.approx(0.05), pytest.approx(0.95)]  # interpolated
    assert fidelity._interval(np.full(3, np.nan)) is None


def _result(real, wm, names=None):
    return {"policies": [{"policy": n, "real_returns": r.tolist(), "wm_returns": {"none": w.tolist()}}
                         for n, r, w in zip(names or [f"p{i}" for i in range(len(real))], real, wm)],
            "spearman": {"none": rho_reference(real.mean(1), wm.mean(1))}}


def test_compare_results_is_b_minus_a_draw_by_draw_over_one_resample():
    # 3 policies of integer returns: rho takes few values, so many draws tie A and B (d = 0) and some are undefined
    rng = np.random.default_rng(11)
    real, wa, wb = (rng.integers(0, 4, (3, 5)).astype(float) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = bootstrap_reference(real, wb, 400, seed=3) - bootstrap_reference(real, wa, 400, seed=3)
    d = d[np.isfinite(d)]
    assert 0 < (d == 0).sum() and d.size < 400 and (d < 0).any() and (d > 0).any()  # each branch exercised
    got = fidelity.compare_results(_result(real, wa), _result(real, wb), draws=400, seed=3)
    assert got["draws"] == d.size
    assert got["difference_mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert got["difference_ci90"] == pytest.approx(np.percentile(d, [5, 95]).tolist(), abs=1e-12)
    assert (got["p_b_lower"], got["p_b_higher"]) == (pytest.approx((d < 0).mean()), pytest.approx((d > 0).mean()))
    with pytest.raises(ValueError, match="same policies"):  # the same returns under other names: not comparable
        fidelity.compare_results(_result(real, wa), _result(real, wb, ["x", "y", "z"]))


# --- summarize, pooling, tables -----------------------------------------------------------------------------------
REAL = np.array([[4.0, 2], [1, 1], [0, 4]])            # means 3, 1, 2
DEC = np.array([[2.0, 2], [0, 2], [5, 5]])             # means 2, 1, 5
CTRL = np.array([[-1.0, -1], [-4, -4], [-0.5, -0.5]])  # means -1, -4, -0.5: real - ctrl 4, 5, 2.5
WM = {"none": np.array([[3.0, 3], [2, 0], [1, 3]]),    # means 3, 1, 2: real's order; wm - ctrl 4, 5, 2.5
      "other": np.array([[0.0, 0], [3, 3], [1, 2]])}   # means 0, 3, 1.5: reversed; wm - ctrl 1, 7, 2
TERMS = {"real": np.arange(12.0).reshape(3, 2, 2), "decoded_real": 10 * np.arange(12.0).reshape(3, 2, 2),
         "wm": {"none": 100 + np.arange(12.0).reshape(3, 2, 2), "other": -np.arange(12.0).reshape(3, 2, 2)}}


def test_summarize_means_spearman_figures_and_term_splits_by_hand():
    res = fidelity.summarize(["a", "b", "c"], REAL, DEC, CTRL, WM, {"seed": 0}, TERMS)
    p = res["policies"]
    assert [x["real_return"] for x in p] == [3, 1, 2] and [x["decoded_real_return"] for x in p] == [2, 1, 5]
    assert [x["ctrl_return"] for x in p] == [-1, -4, -0.5]
    assert [x["wm_return"] for x in p] == [{"none": 3, "other": 0}, {"none": 1, "other": 3},
                                           {"none": 2, "other": 1.5}]
    assert p[1]["real_returns"] == [1, 1] and p[2]["wm_returns"]["other"] == [1, 2]
    # Spearman of 3 means: 1 - 6 sum(d^2) / 24
    assert res["spearman"] == {"none": pytest.approx(1.0), "other": pytest.approx(-1.0)}
    assert res["spearman_decoded_real"] == pytest.approx(0.5)  # ranks (3 1 2) vs (2 1 3): sum d^2 = 2
    assert res["spearman_without_ctrl"] == {"none": pytest.approx(1.0), "other": pytest.approx(0.5)}
    assert res["spearman_decoded_real_without_ctrl"] == pytest.approx(-0.5)  # dec - ctrl 3, 5, 5.5
    assert res["spearman_all"] == {c: pytest.approx(rho_reference(REAL.ravel(), w.ravel()), abs=1e-12)
                                   for c, w in WM.items()}
    assert res["same_ranking"] == {"none": True, "other": False} and res["equal_control_cost"] is False
    # the terms: per policy the mean over its episodes of each term, and the episodes themselves
    assert p[0]["terms"] == {"real": [1, 2], "decoded_real": [10, 20], "wm": {"none": [101, 102], "other": [-1, -2]}}
    assert p[2]["terms"]["real"] == [9, 10] and p[2]["terms_episodes"]["real"] == [[8, 9], [10, 11]]
    assert p[1]["terms_episodes"]["wm"]["other"] == [[-4, -5], [-6, -7]]
    assert res["term_names"] == ["object-goal", "tip-object"]
    # a NaN return: no ranking, so no same-ranking answer either (it read "NO" for the reference itself)
    nan = {"none": np.where(WM["none"] == 2, np.nan, WM["none"]), "other": WM["other"]}
    res_nan = fidelity.summarize(["a", "b", "c"], REAL, DEC, CTRL, nan, {"seed": 0, "episodes": 2, "steps": 4})
    assert res_nan["same_ranking"] == {"none": None, "other": None} and res_nan["spearman"]["none"] is None
    assert fidelity.format_table(res_nan).splitlines()[-2].split()[-2:] == ["n/a", "n/a"]
    flat = fidelity.summarize(["a", "b", "c"], REAL, DEC, np.full((3, 2), -0.25), WM, {"seed": 0})
    assert flat["equal_control_cost"] is True and flat["term_names"] is None and "terms" not in flat["policies"][0]


def test_summarize_interval_is_the_bootstrap_over_starts_seeded_by_the_settings():
    # 12 policies: Spearman steps of 6 / (12^3 - 12), fine enough that another seed moves the percentiles
    rng = np.random.default_rng(5)
    real, wm = rng.normal(size=(12, 6)), rng.normal(size=(12, 6))
    res = fidelity.summarize([f"p{i}" for i in range(12)], real, real, np.zeros_like(real), {"none": wm}, {"seed": 9})
    draws = bootstrap_reference(real, wm, 2000, seed=9)  # BOOTSTRAP_DRAWS resamples
    assert res["spearman_ci90"]["none"] == pytest.approx(np.percentile(draws, [5, 95]).tolist(), abs=1e-12)


def _settings(seeds, **kw):
    return {"checkpoint": "/here", "decoder": "the checkpoint's", "model_sha256": "m", "decoder_sha256": "d",
            "steps": 4, "seed": 0, "episodes": len(seeds), "env_seeds": list(seeds), "compile": False,
            "device": "cpu", **kw}


def _part(cols, seeds, **kw):
    """The summarize of REAL & co restricted to episode columns `cols` (their env seeds `seeds`)."""
    return fidelity.summarize(["a", "b", "c"], REAL[:, cols], DEC[:, cols], CTRL[:, cols],
                              {c: w[:, cols] for c, w in WM.items()}, _settings(seeds, **kw),
                              {"real": TERMS["real"][:, cols], "decoded_real": TERMS["decoded_real"][:, cols],
                               "wm": {c: w[:, cols] for c, w in TERMS["wm"].items()}})


def test_pool_results_joins_the_episodes_in_env_seed_order():
    # episodes 0 and 1 of REAL & co, their env seeds swapped (11 before 10) and split over two results given
    # out of order: pooled they read as the episodes in seed order (column 1, then column 0)
    a, b = _part([1], [10], device="cuda", compile=True), _part([0], [11], checkpoint="/copy/elsewhere")
    pooled = fidelity.pool_results([b, a])
    want = fidelity.summarize(["a", "b", "c"], REAL[:, ::-1], DEC[:, ::-1], CTRL[:, ::-1],
                              {c: w[:, ::-1] for c, w in WM.items()}, _settings([10, 11]),
                              {"real": TERMS["real"][:, ::-1], "decoded_real": TERMS["decoded_real"][:, ::-1],
                               "wm": {c: w[:, ::-1] for c, w in TERMS["wm"].items()}})
    assert pooled["policies"][0]["real_returns"] == [2, 4] and pooled["policies"][2]["terms_episodes"]["real"] == \
        [[10, 11], [8, 9]]
    assert {k: v for k, v in pooled.items() if k != "settings"} == {k: v for k, v in want.items() if k != "settings"}
    assert pooled["settings"]["env_seeds"] == [10, 11] and pooled["settings"]["episodes"] == 2
    # interleaved starts: the order is the seeds', not the results'
    three = fidelity.pool_results([_part([0, 1], [20, 22]), _part([0], [21])])
    assert three["policies"][0]["real_returns"] == [4, 4, 2] and three["settings"]["env_seeds"] == [20, 21, 22]


def test_pool_results_refuses_other_policies_caches_and_older_results_at_other_paths():
    a = _part([0], [10])
    swapped = _part([1], [11])
    swapped["policies"] = swapped["policies"][::-1]  # the same policies in another order
    one_cache = _part([1], [11])
    for key in ("spearman", "spearman_ci90"):
        del one_cache[key]["other"]
    for other in (swapped, one_cache):
        with pytest.raises(ValueError, match="policies or caches"):
            fidelity.pool_results([a, other])
    # results without the files' hashes name their model by its path: another path is another model
    old_a, old_b = _part([0], [10]), _part([1], [11], checkpoint="/another")
    for r in (old_a, old_b):
        del r["settings"]["model_sha256"], r["settings"]["decoder_sha256"]
    with pytest.raises(ValueError, match="differs from result 0"):
        fidelity.pool_results([old_a, old_b])
    # one result with the hashes, one without (older code): compared by their paths, which are recorded
    new_a = _part([0], [10])
    assert fidelity.pool_results([new_a, old_a_copy := _part([1], [11])])["settings"]["env_seeds"] == [10, 11]
    del old_a_copy["settings"]["model_sha256"], old_a_copy["settings"]["decoder_sha256"]
    mixed = fidelity.pool_results([new_a, old_a_copy])
    assert mixed["settings"]["episodes"] == 2  # the same paths: they pool
    assert "model_sha256" not in mixed["settings"]  # the old one's files were never hashed: no hash is claimed
    with pytest.raises(ValueError, match=r"\{'checkpoint': \('/another', '/here'\)\}"):  # not "not recorded"
        fidelity.pool_results([new_a, old_b])


def test_format_table_and_terms_show_each_figure_in_its_column():
    res = fidelity.summarize(["a", "b", "c"], REAL, DEC, CTRL, WM, {"seed": 0, "episodes": 2, "steps": 4}, TERMS)
    res["spearman_ci90"] = {"none": [0.25, 0.75], "other": None}
    lines = fidelity.format_table(res).splitlines()
    nums = lambda line: [float(v) for v in re.findall(r"-?\d+\.\d+", line)]  # noqa: E731
    assert lines[1] == "noise seed 0"  # what was measured: only the seed is in these settings
    assert nums(lines[4]) == [3.0, 2.0, 3.0, 0.0]  # policy a: real, dec(real), wm/none, wm/other
    assert nums(next(x for x in lines if x.startswith("Spearman vs real"))) == [0.5, 1.0, -1.0]
    ci = next(x for x in lines if "90 % CI" in x)
    assert "[0.25, 0.75]" in ci and ci.endswith("n/a")
    assert nums(next(x for x in lines if x.startswith("Spearman, ctrl removed"))) == [-0.5, 1.0, 0.5]
    assert lines[-2].split()[-2:] == ["yes", "NO"]
    assert lines[-1].startswith("caution: only 2 starts")  # the caveats close the table
    # terms: per term, the columns real, dec(real), wm/none, wm/other (policy c: means of its two episodes)
    row = next(x for x in fidelity.format_terms(res).splitlines() if x.startswith("c "))
    assert nums(row) == [9, 90, 109, -9, 10, 100, 110, -10]


def test_caveats_name_few_starts_and_columns_that_rank_near_ties():
    # REAL & co over 2 starts: too few for the interval, and every column spans more than 1 % of the real span
    res = fidelity.summarize(["a", "b", "c"], REAL, DEC, CTRL, WM, _settings([10, 11]))
    # real - ctrl means: 4, 5, 2.5 (span 2.5); dec - ctrl 3, 5, 5.5; wm/none 4, 5, 2.5; wm/other 1, 7, 2
    assert fidelity.caveats(res) == [
        "only 2 starts: a Spearman over so few moves a lot with the starts and its 90 % interval has few distinct "
        "resamples; measure 5 or more (pool-fidelity joins calls on disjoint starts)"]
    # a cache whose returns are the control cost plus one constant: it ranks by nothing the frames show
    flat = {"none": WM["none"], "other": CTRL + 7.0}
    res = fidelity.summarize(["a", "b", "c"], np.tile(REAL, 3), np.tile(DEC, 3), np.tile(CTRL, 3),
                             {c: np.tile(w, 3) for c, w in flat.items()}, _settings(range(10, 16)))
    assert fidelity.caveats(res) == [
        "wm/other's mean returns (control cost removed) span 0 across the policies, the real ones 2.5: its ranking "
        "orders near-ties (is the model or decoder trained?)"]
    # a span of 0.02 and of 0.03 against the real 2.5 (1 %: 0.025)
    near = {"none": WM["none"], "other": CTRL + np.array([[0.0], [0.02], [0.0]])}
    res = fidelity.summarize(["a", "b", "c"], np.tile(REAL, 3), np.tile(DEC, 3), np.tile(CTRL, 3),
                             {c: np.tile(w, 3) for c, w in near.items()}, _settings(range(10, 16)))
    assert [c.split("'")[0] for c in fidelity.caveats(res)] == ["wm/other"]
    res["policies"][1]["wm_return"]["other"] = res["policies"][1]["ctrl_return"] + 0.03
    assert fidelity.caveats(res) == []
    lines = fidelity.format_table(res).splitlines()
    assert lines[1] == "checkpoint /here, env seeds 10-15, noise seed 0" and not lines[-1].startswith("caution")
