"""Quality of predicted frames: PSNR/SSIM against reference frames, and the held-out open-loop evaluation."""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from .seeding import derived_seed
from .world_model import chunk_seeds


def _as_images(frames) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0


def frame_psnr(mse: np.ndarray, values: int) -> np.ndarray:
    """10 log10(1 / MSE) per frame in [0, 1]. An exact frame counts as one of its `values` one grey level off, the
    smallest error a uint8 frame can show (91.8 dB at 80x96x3): one exact frame must not make a mean of frames
    infinite, which would read as "identical" for frames that are not."""
    return 10 * np.log10(1.0 / np.maximum(mse, (1 / 255) ** 2 / values))


def psnr(pred, target) -> float:
    """Mean over frames of per-frame PSNR (dB); inf only when every frame equals its reference."""
    pred, target = np.asarray(pred), np.asarray(target)
    values = int(np.prod(target.shape[-3:]))  # per frame
    mse = (((pred.astype(np.float64) - target) / 255.0) ** 2).reshape(-1, values).mean(1)
    if not mse.any():
        return float("inf")
    return float(frame_psnr(mse, values).mean())


def ssim(pred, target) -> float:
    return float(structural_similarity_index_measure(_as_images(pred), _as_images(target), data_range=1.0))


MOVING_LEVELS = 30  # a pixel moves where the real frame differs from the window's start by > 30 grey levels (RGB sum)


def moving_mask(target, start) -> np.ndarray:
    """Moving pixels: bool (..., H, W), where uint8 `target` (..., H, W, 3) differs from the window's `start`
    frame (broadcast against it) by more than `MOVING_LEVELS` grey levels summed over RGB. `start` has target's
    axes or only its last three: windows (N, T, ...) take starts (N, 1, ...), as (N, ...) would be matched to T."""
    target, start = np.asarray(target), np.asarray(start)
    if start.ndim not in (3, target.ndim) or start.shape[-1] != 3:
        raise ValueError(f"start frame(s) {start.shape} for frames {target.shape}: give one (H, W, 3) frame or "
                         f"{target.ndim} axes (e.g. (N, 1, H, W, 3) for windows (N, T, H, W, 3))")
    diff = np.abs(np.asarray(target, np.int16) - np.asarray(start, np.int16)).sum(-1)
    return diff > MOVING_LEVELS


def moving_psnr(pred, target, start) -> float:
    """PSNR (dB) on the moving pixels only: per frame, 10 log10(1 / MSE) over the RGB values of its moving pixels
    (in [0, 1]), averaged over the frames that have any (as `psnr` averages per-frame PSNR); NaN if none has.
    pred, target (..., H, W, 3) uint8; start: the window's start frame(s), broadcast against target."""
    pred, target = np.asarray(pred), np.asarray(target)
    mask = moving_mask(target, start).reshape(-1, *target.shape[-3:-1])
    err = ((pred.astype(np.float64) - target) / 255.0) ** 2
    err = err.reshape(-1, *target.shape[-3:]).sum(-1)  # per pixel, summed over RGB
    n = mask.sum(axis=(1, 2))
    keep = n > 0
    if not keep.any():
        return float("nan")
    mse = (err * mask).sum(axis=(1, 2))[keep] / (3 * n[keep])
    return float(np.mean(frame_psnr(mse, 3 * n[keep])))


def heldout_windows(episodes: list[dict], length: int, max_windows: int = 64, moving: float = 0.0):
    """(start frame, actions, real frames, states) for non-overlapping windows of `length` steps from each episode;
    states: the real frames' simulator states (N, length, S), or None unless every episode has a ``state``.

    `moving` > 0 keeps only windows whose real frames differ from their first frame by at least that mean
    absolute pixel value (so "repeat the last frame" cannot score well by a static scene).
    """
    starts, acts, reals, states = [], [], [], []
    with_state = all("state" in ep for ep in episodes)
    for ep in episodes:
        for t in range(0, len(ep["actions"]) - length + 1, length):
            real = ep["obs"][t + 1:t + 1 + length]
            if np.abs(real.astype(np.int16) - ep["obs"][t].astype(np.int16)).mean() < moving:
                continue
            starts.append(ep["obs"][t])
            acts.append(ep["actions"][t:t + length])
            reals.append(real)
            if with_state:
                states.append(ep["state"][t + 1:t + 1 + length])
    if not starts:
        raise ValueError(f"no held-out window of {length} steps (moving >= {moving}) in {len(episodes)} episode(s); "
                         f"use shorter windows, more episodes or a smaller moving threshold (evaluate-model: "
                         f"--chunks, --holdout, --moving)")
    n = max_windows
    return (np.stack(starts[:n]), np.stack(acts[:n]), np.stack(reals[:n]),
            np.stack(states[:n]) if with_state else None)


def position_scores(decoder, pred, real, start, states) -> dict:
    """Where the state decoder reads the fingertip and the object, against the simulator's positions (cm, mean
    and p90 over frames), on predicted windows (N, T, H, W, 3), on the start frame repeated, and on the real
    frames (the decoder's own error: the floor). A prediction that loses the arm scores far above the floor."""
    from .state_decoder import position_errors

    flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
    repeat = np.repeat(start[:, None], real.shape[1], axis=1)
    keep = ("fingertip", "object")
    return {name: {b: e for b, e in position_errors(decoder, flat(frames), flat(states)).items() if b in keep}
            for name, frames in (("model", pred), ("repeat_last", repeat), ("real", real))}


def follow_scores(decoder, pred, start, states, chunk: int) -> list[dict]:
    """Does the predicted arm move as commanded, chunk by chunk: per chunk of predicted windows (N, T, H, W, 3), the
    fingertip's displacement over the chunk (x and y, pooled over windows) as the decoder reads it off the predicted
    frames, against the simulator's: the least-squares ``slope`` of one on the other and their correlation ``r``;
    and the tip's mean error at the chunk's end (``tip_end_cm``). Both displacements over the first chunk start from
    the tip read off the start frame, for which a window holds no simulator state."""
    from .state_decoder import targets

    n, t = pred.shape[:2]
    tip = decoder.predict(pred.reshape(-1, *pred.shape[2:]))[:, :3].reshape(n, t, 3)
    real = targets(states)[..., :3]
    tip0 = decoder.predict(start)[:, :3]
    out = []
    for end in range(chunk - 1, t, chunk):
        before_p, before_r = (tip0, tip0) if end < chunk else (tip[:, end - chunk], real[:, end - chunk])
        dp, dr = (tip[:, end] - before_p)[:, :2].ravel(), (real[:, end] - before_r)[:, :2].ravel()
        nan = float("nan")  # where the tip (or its prediction) did not move, slope or r is undefined
        out.append({"slope": float(dp @ dr / (dr @ dr)) if dr.any() else nan,
                    "r": float(np.corrcoef(dp, dr)[0, 1]) if dp.std() > 0 and dr.std() > 0 else nan,
                    "tip_end_cm": float(100 * np.linalg.norm(tip[:, end] - real[:, end], axis=1).mean())})
    return out


@torch.no_grad()
def conditioning_error(model, pred, real, start=None) -> list[float]:
    """How far a rollout's own conditioning frames are from the real ones: for each chunk but the last of predicted
    windows (N, T, H, W, 3), the RMS difference between the encoded last `spec.cond_frames` frames up to the chunk's
    end, predicted and real, in the normalised latent units the DiT reads (and `train --cond-noise` perturbs; the
    real latents' RMS: 1.2 on the bundled model). The next chunk is conditioned on exactly these frames: where they
    reach back past the window (cond_frames > chunk), to its `start` frame (N, H, W, 3), then that repeated, as
    `WorldModel.cond_window` pads."""
    k, n = model.spec.chunk, model.spec.cond_frames
    first = 0 if start is None else 1  # the index of the first predicted frame
    if start is not None:
        pred, real = (np.concatenate([start[:, None], a], axis=1) for a in (pred, real))
    out = []
    for end in range(first + k, pred.shape[1], k):
        idx = np.maximum(np.arange(end - n, end), 0)  # before the oldest frame: the oldest repeated
        d = model.encode(torch.as_tensor(pred[:, idx])) - model.encode(torch.as_tensor(real[:, idx]))
        out.append(float(d.float().pow(2).mean().sqrt()))
    return out


def frame_scores(pred, real, start) -> dict:
    """Full-frame PSNR and SSIM and moving-region PSNR of predicted windows (N, T, H, W, 3) against the real
    ones, and the same for repeating each window's start frame (N, H, W, 3) (the trivial predictor)."""
    repeat = np.repeat(start[:, None], real.shape[1], axis=1)
    moving = start[:, None]
    return {"psnr": psnr(pred, real), "ssim": ssim(pred, real), "psnr_moving": moving_psnr(pred, real, moving),
            "psnr_repeat_last": psnr(repeat, real), "ssim_repeat_last": ssim(repeat, real),
            "psnr_moving_repeat_last": moving_psnr(repeat, real, moving),
            "moving_pixel_share": float(moving_mask(real, moving).mean())}


@torch.no_grad()
def teacher_forced(model, starts, acts, reals, policy=None, num_steps: int | None = None,
                   seed: int | list[int] = 0, batch: int = 8) -> np.ndarray:
    """Each chunk of the windows predicted from the simulator's frames before it (the start frame, then the real
    frames), not from the model's own: what a rollout would score if its errors did not compound. Chunk c gets the
    rollout's seed (`seed + c`; `seed` one int or one per window); each chunk is a new prediction for `policy`."""
    k = model.spec.chunk
    history = np.concatenate([starts[:, None], reals], axis=1)  # the window's frame t at index t
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(starts)
    out = []
    for i in range(0, len(starts), batch):
        rows = slice(i, i + batch)
        out.append(np.concatenate([model.predict(history[rows, :c * k + 1], acts[rows, c * k:(c + 1) * k],
                                                 policy=policy, num_steps=num_steps,
                                                 seed=chunk_seeds(seeds[rows], c))[0].cpu().numpy()
                                   for c in range(acts.shape[1] // k)], axis=1))
    return np.concatenate(out)


@torch.no_grad()
def evaluate_open_loop(model, episodes: list[dict], chunks=(1, 4), policy=None, num_steps: int | None = None,
                       moving: float = 2.0, max_windows: int = 16, batch: int = 8, seed: int = 0,
                       decoder=None, real_cond: bool = False) -> dict:
    """Scores (`frame_scores`) of open-loop rollouts vs. the simulator's frames on held-out moving windows, over
    each horizon in `chunks` (chunks per rollout). One rollout of the longest horizon per window: a shorter
    horizon is scored on its first chunks (an open-loop chunk depends only on what precedes it). With a state
    `decoder` and episodes that carry their states, each horizon also gets ``positions`` (`position_scores`), and the
    longest rollout gets ``follow`` (`follow_scores`, one entry per chunk); ``computed_fraction``: the share of the
    rollouts' model calls (per sample) that ran the whole block stack (1 uncached). A rollout of more than one chunk
    also
    gets ``cond_error`` (`conditioning_error`, one entry per chunk after the first). `real_cond`: each horizon also
    gets ``real_cond``, the model's full-frame and moving-region PSNR and SSIM with every chunk conditioned on the
    real frames (`teacher_forced`): the gap to the open-loop figures is what compounding costs. Window w draws the
    noise `derived_seed(seed, w) + chunk`, its own whatever the batch (w counts the windows kept, so other
    `moving`/`max_windows` settings keep the first windows' noise only where they keep the same windows before
    them); a diffusers-hook cache policy decides per batch of `batch` windows, so its frames depend on the batch."""
    horizons = sorted({int(c) for c in np.atleast_1d(chunks)})
    if not horizons or horizons[0] < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    k = model.spec.chunk
    starts, acts, reals, states = heldout_windows(episodes, horizons[-1] * k, max_windows, moving)
    seeds = [derived_seed(seed, w) for w in range(len(starts))]  # window w's own noise, whatever the batch
    from tqdm.auto import tqdm

    preds, computed = [], []
    with tqdm(total=len(starts), desc="open-loop rollouts", unit="window", dynamic_ncols=True) as bar:
        for i in range(0, len(starts), batch):
            frames, outs = model.rollout(starts[i:i + batch], acts[i:i + batch], policy=policy, num_steps=num_steps,
                                         seed=seeds[i:i + batch])
            preds.append(frames.cpu().numpy())
            computed += [r.computed for o in outs for r in o.records]
            bar.update(len(frames))
    pred = np.concatenate(preds)
    # what a cache did: the share of the rollouts' model calls (per sample) that ran the whole block stack
    out = {"windows": int(len(starts)), "chunk": k, "computed_fraction": float(np.mean(computed)),
           "horizons": {str(c): {"frames": int(len(starts) * c * k), **frame_scores(pred[:, :c * k], reals[:, :c * k],
                                                                                 starts)} for c in horizons}}
    if horizons[-1] > 1:
        out["cond_error"] = conditioning_error(model, pred, reals, starts)
    if real_cond:
        tf = teacher_forced(model, starts, acts, reals, policy, num_steps, seeds, batch)
        for c in horizons:
            r = frame_scores(tf[:, :c * k], reals[:, :c * k], starts)
            out["horizons"][str(c)]["real_cond"] = {key: r[key] for key in ("psnr", "ssim", "psnr_moving")}
    if decoder is not None and states is not None:
        for c in horizons:
            out["horizons"][str(c)]["positions"] = position_scores(decoder, pred[:, :c * k], reals[:, :c * k], starts,
                                                                   states[:, :c * k])
        out["follow"] = follow_scores(decoder, pred, starts, states, k)
    return out


def format_scores(res: dict) -> str:
    """`evaluate_open_loop`'s result as a table: per horizon, the model and repeat-last, full-frame and moving."""
    pos = all("positions" in r for r in res["horizons"].values())
    head = f"{'chunks':>6} {'frames':>6} {'predictor':<12} {'PSNR':>7} {'SSIM':>6} {'moving PSNR':>11} {'moving px':>9}"
    head += f" {'tip cm':>7} {'obj cm':>7}" if pos else ""
    cache = (f"; the cache computed {res['computed_fraction']:.2f} of the model calls"
             if res.get("computed_fraction", 1.0) < 1 else "")
    lines = [f"{res['windows']} window(s), {res['chunk']} frames per chunk{cache}", head, "-" * len(head)]
    cm = lambda r, name: (f" {r['positions'][name]['fingertip']['mean_cm']:>7.2f}"  # noqa: E731
                          f" {r['positions'][name]['object']['mean_cm']:>7.2f}") if pos else ""
    for c, r in res["horizons"].items():
        for name, sfx, key in (("model", "", "model"), ("repeat-last", "_repeat_last", "repeat_last")):
            lines.append(f"{c:>6} {r['frames']:>6} {name:<12} {r['psnr' + sfx]:>7.2f} {r['ssim' + sfx]:>6.3f} "
                         f"{r['psnr_moving' + sfx]:>11.2f} {100 * r['moving_pixel_share']:>8.1f}%" + cm(r, key))
        if "real_cond" in r:  # the model again, every chunk conditioned on the real frames
            t = r["real_cond"]
            lines.append(f"{c:>6} {r['frames']:>6} {'real cond':<12} {t['psnr']:>7.2f} {t['ssim']:>6.3f} "
                         f"{t['psnr_moving']:>11.2f}")
        if pos:  # the decoder on the real frames: its own error, the floor of the two rows above
            lines.append(f"{c:>6} {r['frames']:>6} {'real frames':<12} {'':>7} {'':>6} {'':>11} {'':>9}" + cm(r, "real"))
    if any("real_cond" in r for r in res["horizons"].values()):
        lines += ["", "real cond: the model with every chunk conditioned on the simulator's frame before it, not on "
                  "its own (teacher-forced); its gap to the model's row is what compounding costs"]
    if "follow" in res:
        lines += ["", "fingertip per chunk of the rollout, model vs simulator: displacement slope / r, error at the "
                  "chunk's end"] + [f"  chunk {i}: {f['slope']:.2f} / {f['r']:.2f}, {f['tip_end_cm']:.1f} cm"
                                   for i, f in enumerate(res["follow"], 1)]
    if res.get("cond_error"):
        per_chunk = ", ".join(f"chunk {i}: {e:.3f}" for i, e in enumerate(res["cond_error"], 2))
        lines += ["", "conditioning frames of the rollout vs the real ones, RMS latent difference (normalised units, "
                  f"as train --cond-noise): {per_chunk}"]
    return "\n".join(lines)
