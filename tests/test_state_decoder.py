"""State decoder (frame -> fingertip/object/goal positions), the env reward built on it, and the moving-region
PSNR. Synthetic stores whose positions are readable from the frame keep training to seconds."""
import json

import numpy as np
import pytest
import torch

from worldcache.mujoco_data import GOAL, OBJ, TIP, task_reward
from worldcache.quality import (conditioning_error, follow_scores, frame_scores, moving_mask, moving_psnr,
                                position_scores)
from worldcache.rollouts.store import EpisodeStore
from worldcache.state_decoder import (BODIES, CONFIG_FILE, StateDecoder, StateDecoderConfig, position_errors,
                                      targets, train_state_decoder)

H, W = 32, 40
GOAL_POS = (0.45, -0.05, -0.323)


def draw(tip, obj) -> np.ndarray:
    """A frame with the fingertip as a white and the object as a red 3x3 square at their x/y (in [-0.5, 0.5])."""
    f = np.zeros((H, W, 3), np.uint8)
    for pos, colour in ((obj, (255, 0, 0)), (tip, (255, 255, 255))):
        r, c = int(round((pos[1] + 0.5) * (H - 3))), int(round((pos[0] + 0.5) * (W - 3)))
        f[r:r + 3, c:c + 3] = colour
    return f


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("dec") / "eps.zarr"
    st = EpisodeStore.create(path)
    rng = np.random.default_rng(0)
    for e in range(20):
        T = 15
        state = np.zeros((T + 1, 23), np.float32)
        state[:, TIP] = np.c_[rng.uniform(-0.5, 0.5, (T + 1, 2)), np.full(T + 1, -0.2)]
        state[:, OBJ] = np.c_[rng.uniform(-0.5, 0.5, (T + 1, 2)), np.full(T + 1, -0.275)]
        state[:, GOAL] = GOAL_POS
        obs = np.stack([draw(s[TIP], s[OBJ]) for s in state])
        st.write_episode(f"ep{e:02d}", obs, np.zeros((T, 3), np.float32), np.zeros(T, np.float32), np.zeros(T, bool),
                         np.zeros(T, bool), extras={"state": state})
    return path


def test_targets_are_the_observations_fingertip_object_goal():
    states = np.arange(2 * 23, dtype=np.float32).reshape(2, 23)
    np.testing.assert_array_equal(targets(states), np.concatenate([states[:, TIP], states[:, OBJ], states[:, GOAL]], 1))
    assert targets(states)[1].tolist() == list(range(23 + 14, 23 + 23))


def test_decoder_learns_positions_and_round_trips(store, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "decoder"
    res = train_state_decoder(store, out, steps=400, batch_size=32, lr=1e-2, holdout=0.2,  blur=0.0,
                              config=StateDecoderConfig(channels=16, keypoints=8, hidden=64))
    assert res["train_frames"] == 16 * 16 and res["heldout_frames"] == 4 * 16
    err = res["heldout_errors"]
    assert set(err) == set(BODIES)
    # the mean predictor's error, for scale: positions spread over 1 m in x and y
    held = [EpisodeStore(store, mode="r").load_episode(f"ep{e:02d}") for e in range(16, 20)]
    frames, states = np.concatenate([e["obs"] for e in held]), np.concatenate([e["state"] for e in held])
    base = 100 * np.linalg.norm(targets(states)[:, :6] - targets(states)[:, :6].mean(0), axis=1).mean()
    assert err["fingertip"]["mean_cm"] < 0.3 * base and err["object"]["mean_cm"] < 0.3 * base, (err, base)
    assert err["goal"]["p90_cm"] < 0.5  # it never moves: read exactly (its std is clamped, not 0)
    assert err["fingertip"]["mean_cm"] <= err["fingertip"]["p90_cm"] * 1.5
    dec = StateDecoder.load(out)
    np.testing.assert_array_equal(dec.predict(frames), res["decoder"].predict(frames))
    assert position_errors(dec, frames, states) == err
    with pytest.raises(ValueError, match="flatten windows first"):  # (N, T, ...) read T as the bodies' axis
        position_errors(dec, frames[None], states[None])
    assert dec.predict(frames[:3].reshape(1, 3, H, W, 3)).shape == (1, 3, 9)
    # init_from continues from the saved weights: 20 more steps keep the error (20 from scratch learn nothing)
    more = train_state_decoder(store, None, steps=20, batch_size=32, lr=1e-3, holdout=0.2, blur=0.0, init_from=out)
    assert more["heldout_errors"]["fingertip"]["mean_cm"] < 0.3 * base
    StateDecoder(StateDecoderConfig(height=2 * H, width=W)).save(tmp_path / "other_size")
    with pytest.raises(ValueError, match=rf"other_size: the decoder reads {2 * H}x{W} frames, .* holds {H}x{W}"):
        train_state_decoder(store, None, steps=1, init_from=tmp_path / "other_size")
    with pytest.raises(ValueError, match="uint8"):
        dec.predict(frames[:, :8])
    (out / CONFIG_FILE).write_text(json.dumps({**json.loads((out / CONFIG_FILE).read_text()), "colour": 1}))
    with pytest.raises(ValueError, match="colour"):
        StateDecoder.load(out)
    with pytest.raises(FileNotFoundError, match="state_decoder"):
        StateDecoder.load(tmp_path)


def test_an_interrupted_and_resumed_decoder_run_ends_where_an_unbroken_one_does(store, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.set_num_threads(1)
    kw = dict(steps=6, batch_size=8, lr=1e-2, holdout=0.2, blur=0.5, save_every=2,
              config=StateDecoderConfig(channels=8, keypoints=4, hidden=16))
    whole = train_state_decoder(store, None, state_file=tmp_path / "whole.pt", **kw)
    steps = [0]

    def die_in_step_5(opt, args, kwargs):
        steps[0] += 1
        if steps[0] == 5:
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(die_in_step_5)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_state_decoder(store, None, state_file=tmp_path / "cut.pt", **kw)
    finally:
        handle.remove()
    assert torch.load(tmp_path / "cut.pt", weights_only=False)["step"] == 4
    torch.manual_seed(123)  # the process's generator differs: the draws come from the saved state
    before = torch.get_rng_state()
    resumed = train_state_decoder(store, None, state_file=tmp_path / "cut.pt", **kw)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left as it was
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 6
    for (name, a), b in zip(whole["decoder"].state_dict().items(), resumed["decoder"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed["heldout_errors"] == whole["heldout_errors"]
    # Ctrl-C (a signal, held until the step ends) in step 5: the state is saved where it stopped, step 5
    import signal

    steps[0] = 0
    handle = register_optimizer_step_post_hook(
        lambda *a: steps.__setitem__(0, steps[0] + 1) or (steps[0] == 5 and signal.raise_signal(signal.SIGINT)))
    try:
        with pytest.raises(KeyboardInterrupt):
            train_state_decoder(store, None, state_file=tmp_path / "sig.pt", **kw)
    finally:
        handle.remove()
    assert torch.load(tmp_path / "sig.pt", weights_only=False)["step"] == 5
    again = train_state_decoder(store, None, state_file=tmp_path / "sig.pt", **kw)
    assert again["losses"] == whole["losses"]
    # another run's state is refused, not resumed under these settings (OneCycleLR's length is fixed: steps too)
    # (another split trains on other frames: the data's fingerprint differs too)
    for change, named in (({"lr": 2e-2}, "lr"), ({"steps": 8}, "steps"), ({"blur": 0.25}, "blur"),
                          ({"holdout": 0.3}, "data, holdout")):
        with pytest.raises(ValueError, match=f"other settings or data \\({named}\\)"):
            train_state_decoder(store, None, state_file=tmp_path / "cut.pt", **{**kw, **change})


def test_training_needs_state_extras(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    st.write_episode("ep0", np.zeros((3, H, W, 3), np.uint8), np.zeros((2, 3), np.float32), np.zeros(2, np.float32),
                     np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="'state'"):
        train_state_decoder(tmp_path / "s.zarr", None, steps=1)


def constant_decoder(tip, obj, goal) -> StateDecoder:
    """A decoder that reads the same positions off every frame: all weights 0, the normalisation's mean = them."""
    dec = StateDecoder(StateDecoderConfig(height=H, width=W, mean=[*tip, *obj, *goal], std=[0.1] * 9))
    with torch.no_grad():
        for p in dec.parameters():
            p.zero_()
    return dec


def test_rewards_are_the_task_formula_on_decoded_positions_with_the_exact_control_cost():
    dec = constant_decoder((0, 0, 0), (0.3, 0.4, 0), (0.3, 0.4, 1.2))
    frames = np.zeros((4, H, W, 3), np.uint8)
    acts = np.array([[1, 0, 0], [0, 2, 0], [1, 1, 1], [0, 0, 0]], np.float32)
    # per step: -|obj - goal| - 0.5 |tip - obj| - 0.1 |a|^2 = -1.2 - 0.25 - 0.1 * (1, 4, 3, 0)
    np.testing.assert_allclose(dec.rewards(frames, acts), [-1.55, -1.85, -1.75, -1.45], rtol=1e-6)
    np.testing.assert_allclose(dec.terms(frames), [[-1.2, -0.25]] * 4, rtol=1e-6)  # the two position terms apart
    assert dec.chunk_reward(frames, acts) == pytest.approx(-6.6, rel=1e-6)
    for bad in (acts.reshape(-1), acts[:1]):  # broadcast, these charged the wrong control cost without a word
        with pytest.raises(ValueError, match="must be one per frame"):
            dec.rewards(frames, bad)


def test_heldout_windows_pair_each_frame_with_its_state_and_the_actions_before_it():
    # frame t, state t and action t hold t (action t leads from frame t to t + 1): any shift shows as a mismatch
    from worldcache.quality import heldout_windows

    eps = [{"obs": np.arange(9, dtype=np.uint8)[:, None, None, None] + np.zeros((9, 2, 2, 3), np.uint8) + 10 * e,
            "actions": np.arange(8, dtype=np.float32)[:, None] + np.zeros((8, 3), np.float32) + 10 * e,
            "state": np.arange(9, dtype=np.float32)[:, None] + np.zeros((9, 23), np.float32) + 10 * e}
           for e in range(2)]
    starts, acts, reals, states = heldout_windows(eps, 4)
    assert starts[:, 0, 0, 0].tolist() == [0, 4, 10, 14]
    assert acts[:, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12, 13], [14, 15, 16, 17]]
    assert reals[:, :, 0, 0, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [11, 12, 13, 14], [15, 16, 17, 18]]
    np.testing.assert_array_equal(states[..., 0], reals[:, :, 0, 0, 0])


# --- moving-region PSNR ------------------------------------------------------------------------------------------
def test_moving_psnr_exact_values():
    start = np.zeros((2, 2, 3), np.uint8)
    real = np.zeros((3, 2, 2, 3), np.uint8)
    real[0, 0, 0] = 20        # 60 grey levels summed over RGB: moving
    real[0, 0, 1] = 10        # 30: not moving (the threshold is "more than 30")
    real[2] = 40              # every pixel moves; frame 1 has none and is left out
    pred = real.copy()
    pred[0, 0, 0, 2] += 51    # 0.2 off in one channel of the one moving pixel: MSE 0.04 / 3
    pred[0, 0, 1] = 255       # a static pixel: ignored
    pred[2] += 51             # 0.2 off everywhere: MSE 0.04
    np.testing.assert_array_equal(moving_mask(real, start)[:, 0], [[True, False], [False, False], [True, True]])
    expected = (10 * np.log10(75) + 10 * np.log10(25)) / 2  # 18.7506 and 13.9794 dB
    assert moving_psnr(pred, real, start) == pytest.approx(expected, abs=1e-9)
    assert moving_psnr(pred, real, start) == pytest.approx(16.365006, abs=1e-6)
    assert np.isnan(moving_psnr(pred[1:2], real[1:2], start))
    # darker than the start counts as brighter does: 10 levels down per channel (30 summed) is not moving, 11 is
    bright = np.full((2, 2, 3), 200, np.uint8)
    down = np.full((1, 2, 2, 3), 190, np.uint8)
    down[0, 0, 0] = 189
    np.testing.assert_array_equal(moving_mask(down, bright)[0], [[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"start frame\(s\) \(3, 2, 2, 3\) for frames \(3, 4, 2, 2, 3\)"):
        moving_mask(np.stack([real] * 4, 1), real)  # window starts (N, ...) for windows (N, T, ...): matched to T
    # frame_scores: windows (N, T) with their own start frames; repeat-last predicts the start frame. Each pixel
    # blown up to 8x8 (SSIM needs 11x11 frames): the per-frame moving MSEs, so the PSNRs, stay the same.
    big = lambda x: x.repeat(8, axis=-3).repeat(8, axis=-2)  # noqa: E731
    s = frame_scores(big(pred)[None], big(real)[None], big(start)[None])
    assert s["psnr_moving"] == pytest.approx(expected, abs=1e-9)
    # repeat-last is 20/255 off in 3 channels on frame 0's moving pixel, 40/255 everywhere on frame 2
    rep = (10 * np.log10(1 / (20 / 255) ** 2) + 10 * np.log10(1 / (40 / 255) ** 2)) / 2
    assert s["psnr_moving_repeat_last"] == pytest.approx(rep, abs=1e-9)
    assert s["moving_pixel_share"] == pytest.approx(5 / 12)


def test_position_errors_are_euclidean_in_xyz():
    """Per body, the 3-D distance in cm: offsets in y and z count as x does (3-4-5 triangles, by hand)."""
    offsets = np.array([[[0.3, 0.0, 0.4], [0.0, 0.05, 0.12], [0.06, 0.0, 0.08]],   # 50, 13, 10 cm
                        [[0.0, 0.0, 0.0], [0.0, 0.0, -0.2], [0.0, -0.03, 0.0]]])  # 0, 20, 3 cm

    class Stub:  # frame i (its first pixel's value) reads its true positions plus offsets[i]
        def predict(self, frames):
            i = frames[:, 0, 0, 0].astype(int)
            return targets(states[i]) + offsets[i].reshape(len(i), 9)

    states = np.random.default_rng(0).normal(size=(2, 23))
    frames = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(2)])
    err = position_errors(Stub(), frames, states)
    # two frames: the mean, and the 90th percentile interpolated between them (0.1 a + 0.9 b, b the larger)
    assert err["fingertip"] == pytest.approx({"mean_cm": 25.0, "p90_cm": 45.0})
    assert err["object"] == pytest.approx({"mean_cm": 16.5, "p90_cm": 0.1 * 13 + 0.9 * 20})
    assert err["goal"] == pytest.approx({"mean_cm": 6.5, "p90_cm": 0.1 * 3 + 0.9 * 10})


def test_position_scores_exact_values():
    """Decoded fingertip/object errors of predicted windows, of the repeated start frame and of the real frames."""
    class Stub:  # reads the fingertip's x as the first pixel's red value / 100, the object's x as twice that
        def predict(self, frames):
            v = frames[:, 0, 0, 0].astype(np.float64) / 100
            out = np.zeros((len(frames), 9))
            out[:, 0], out[:, 3] = v, 2 * v
            return out

    frame = lambda v: np.full((4, 4, 3), v, np.uint8)  # noqa: E731
    start = frame(10)[None]
    real = np.stack([frame(30), frame(50)])[None]
    pred = np.stack([frame(30), frame(20)])[None]
    states = np.zeros((1, 2, 23))
    states[0, :, TIP.start] = [0.3, 0.5]
    states[0, :, OBJ.start] = [0.6, 1.0]
    s = position_scores(Stub(), pred, real, start, states)
    assert set(s) == {"model", "repeat_last", "real"} and set(s["model"]) == {"fingertip", "object"}
    # model: tip 0 and 30 cm off, object 0 and 60; repeat-last: tip 20 and 40, object 40 and 80; real: exact
    assert s["model"]["fingertip"] == pytest.approx({"mean_cm": 15.0, "p90_cm": 27.0})
    assert s["model"]["object"] == pytest.approx({"mean_cm": 30.0, "p90_cm": 54.0})
    assert s["repeat_last"]["fingertip"] == pytest.approx({"mean_cm": 30.0, "p90_cm": 38.0})
    assert s["repeat_last"]["object"] == pytest.approx({"mean_cm": 60.0, "p90_cm": 76.0})
    assert s["real"]["fingertip"] == pytest.approx({"mean_cm": 0.0, "p90_cm": 0.0})


def test_follow_scores_exact_values():
    """Per chunk: slope and r of the predicted fingertip displacement (x, y) on the simulator's, and the tip's error
    at the chunk's end; the first chunk's displacements start from the tip read off the start frame."""
    class Stub:  # reads the fingertip's x and y as the first pixel's red and green values / 100
        def predict(self, frames):
            out = np.zeros((len(frames), 9))
            out[:, :2] = frames[:, 0, 0, :2].astype(np.float64) / 100
            return out

    frame = lambda x, y: np.full((4, 4, 3), (x, y, 0), np.uint8)  # noqa: E731
    start = np.stack([frame(10, 10), frame(20, 0)])
    # 2 windows of 2 chunks of 2 frames; the tip as the stub reads it (cm): frames 0-3
    pred = np.stack([np.stack([frame(10, 10), frame(30, 10), frame(30, 20), frame(30, 40)]),
                     np.stack([frame(20, 0), frame(10, 20), frame(10, 20), frame(10, 20)])])
    states = np.zeros((2, 4, 23))
    states[0, :, TIP.start:TIP.start + 2] = [[0.4, 0.1], [0.4, 0.1], [0.4, 0.2], [0.4, 0.3]]
    states[1, :, TIP.start:TIP.start + 2] = [[0.2, 0.0], [0.2, 0.3], [0.2, 0.3], [0.2, 0.3]]
    f = follow_scores(Stub(), pred, start, states, chunk=2)
    assert len(f) == 2
    # chunk 1, from the start frames' tips: predicted (0.2, 0), (-0.1, 0.2); real (0.3, 0), (0, 0.3)
    assert f[0]["slope"] == pytest.approx(2 / 3)
    assert f[0]["r"] == pytest.approx(5 / (3 * np.sqrt(3)))
    assert f[0]["tip_end_cm"] == pytest.approx(5 + 5 * np.sqrt(2))
    # chunk 2, from each own tip at frame 1: predicted (0, 0.3), (0, 0); real (0, 0.2), (0, 0)
    assert f[1] == pytest.approx({"slope": 1.5, "r": 1.0, "tip_end_cm": 10 * np.sqrt(2)})
    # a tip that does not move leaves slope and r undefined
    at_start = np.zeros((2, 2, 23))
    at_start[:, :, TIP.start:TIP.start + 2] = np.array([[0.1, 0.1], [0.2, 0.0]])[:, None]
    still = follow_scores(Stub(), np.repeat(start[:, None], 2, axis=1), start, at_start, chunk=2)
    assert np.isnan(still[0]["slope"]) and np.isnan(still[0]["r"])


def test_conditioning_error_exact_values():
    """Per chunk but the last: the RMS latent difference of the last `cond_frames` frames, predicted vs real."""
    class Stub:  # a "latent" per frame: its first pixel's red value; chunks of 2 frames
        def __init__(self, cond_frames):
            self.spec = type("Spec", (), {"chunk": 2, "cond_frames": cond_frames})()

        def encode(self, frames):
            return frames[..., 0, 0, 0].float()

    def windows(*reds):  # (windows, frames) red values -> uint8 frames (windows, frames, 2, 2, 3)
        x = np.zeros((*np.shape(reds), 2, 2, 3), np.uint8)
        x[..., 0] = np.array(reds)[..., None, None]
        return x

    real = windows([0, 7, 0, 5, 0, 0], [0, 7, 0, 5, 0, 0])
    pred = windows([0, 10, 0, 5, 0, 0], [9, 8, 0, 1, 0, 0])
    # 3 chunks: chunks 2 and 3 are conditioned on frames 1 and 3; differences (3, 1) and (0, -4)
    assert conditioning_error(Stub(1), pred, real) == pytest.approx([np.sqrt(5), np.sqrt(8)])
    # two conditioning frames: frames 0-1 and 2-3; differences (0, 3, 9, 1) and (0, 0, 0, -4)
    assert conditioning_error(Stub(2), pred, real) == pytest.approx([np.sqrt(91 / 4), 2.0])
    assert conditioning_error(Stub(1), pred[:, :2], real[:, :2]) == []  # one chunk: nothing conditions on it
    # three conditioning frames, chunks of 2 (the cond_frames > chunk case): chunk 2 reads the start frame (red 4 in
    # both) and frames 0-1: differences (0, 0, 3) and (0, 9, 1); chunk 3 reads frames 1-3: (3, 0, 0) and (1, 0, -4)
    start = windows([4], [4])[:, 0]
    assert conditioning_error(Stub(3), pred, real, start) == pytest.approx([np.sqrt(91 / 6), np.sqrt(26 / 6)])
    # no start given: the window's oldest frame repeats (chunk 2: frames 0, 0, 1: (0, 0, 3) and (9, 9, 1))
    assert conditioning_error(Stub(3), pred, real) == pytest.approx([np.sqrt(172 / 6), np.sqrt(26 / 6)])


def test_a_decoder_records_the_scene_of_the_make_data_store_it_learned(store, tmp_path):
    """`StateDecoderConfig.scene`: a make-data store's scene record (its camera, controller, supersampling); a store
    without one (drawn frames here, a rollout's or own-frames store) leaves a new decoder at None (v1) and a
    continued one at the scene it had. What the env and evaluate-policies compare with the model's scene."""
    from worldcache.mujoco_data import generate
    from worldcache.scene import SCENES, scene_record

    v2 = tmp_path / "v2.zarr"
    generate(v2, episodes=2, steps=4, height=H, width=W, scene="v2", progress=False)
    gen = EpisodeStore(v2, mode="r").attrs["generator"]
    train_state_decoder(v2, tmp_path / "dec", steps=1, holdout=0.5, blur=0.0)
    dec = StateDecoder.load(tmp_path / "dec")
    assert dec.config.scene == scene_record(gen) and dec.config.scene["camera"]["distance"] == 2.25
    dec.check_scene(scene_record(gen), "here")
    with pytest.raises(ValueError, match=r"here: the state decoder learned another scene .*'distance': 2.25"):
        dec.check_scene(None, "here")
    kept = train_state_decoder(store, None, steps=1, holdout=0.2, blur=0.0, init_from=tmp_path / "dec")["decoder"]
    assert kept.config.scene == scene_record(gen)  # drawn frames say nothing of the view: the scene it had
    v1 = train_state_decoder(store, tmp_path / "v1", steps=1, holdout=0.2, blur=0.0)["decoder"]
    assert v1.config.scene is None
    # a v1 decoder continued on a make-data store of v2 reads v2's view from then on
    moved = train_state_decoder(v2, None, steps=1, holdout=0.5, blur=0.0, init_from=tmp_path / "v1")["decoder"]
    assert moved.config.scene == scene_record(gen)
    # but not when it learns nothing there: steps=0 measures the v1 decoder on v2's frames, unchanged and unlabelled
    measured = train_state_decoder(v2, None, steps=0, holdout=0.5, blur=0.0, init_from=tmp_path / "v1")
    assert measured["decoder"].config.scene is None and measured["losses"] == []
    assert measured["heldout_errors"] is not None
    assert SCENES["v2"]["camera"]["distance"] == 2.25
