"""One video per episode of a rollout store (or of a make-data store: its simulator frames): `write_videos`
(`worldcache inspect STORE --video DIR`).

Encoded as MP4 (H.264) with imageio's ffmpeg plugin (the `imageio-ffmpeg` package ships an ffmpeg binary); where
no encoder is available, a GIF is written instead. The frame rate is the model's (``fps`` of model.json, in the
store's rollout attrs): the video plays at the speed of the world it predicts. With `side_by_side`, each frame
has the cache's skip pattern next to it: a grid of env steps (rows) by model calls of the step's prediction
(columns), light where the block stack ran and dark where it was approximated, the current step's row bright.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .identity import check_format, is_make_data
from .reader import chunk_shape, episode_video
from .store import EpisodeStore

COMPUTED, SKIPPED = np.array([120, 220, 120], np.uint8), np.array([50, 50, 70], np.uint8)


def mp4_available() -> bool:
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return False


def skip_panel(computed: np.ndarray, step: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3) image of a (T, n) computed pattern with row `step` highlighted."""
    T, n = computed.shape
    grid = np.where(computed[..., None], COMPUTED, SKIPPED).astype(np.float32)
    dim = np.full(T, 0.45, np.float32)
    dim[step] = 1.0
    grid = (grid * dim[:, None, None]).astype(np.uint8)
    rows = np.linspace(0, T - 1e-6, height).astype(int)  # nearest-neighbour resize to the frame height
    cell = max(1, height // max(T, 1))
    cols = np.repeat(np.arange(n), max(2, cell))
    return grid[rows][:, cols]


def episode_frames(ep: dict, chunk: int, side_by_side: bool) -> np.ndarray:
    """The episode's frames (reset frame first), optionally with the skip pattern at the right."""
    video = episode_video(ep, chunk)[0] if "frames" in ep else ep["obs"]
    if not side_by_side:
        return video
    comp = ep["cache/computed"]
    per = chunk if "frames" in ep else 1  # frames per env step
    out = []
    for f, frame in enumerate(video):
        step = min(max(f - 1, 0) // per, len(comp) - 1)  # frame 0 (reset) shows the first step
        out.append(np.concatenate([frame, np.zeros((frame.shape[0], 2, 3), np.uint8),
                                   skip_panel(comp, step, frame.shape[0])], axis=1))
    return np.stack(out)


def write_videos(path: str | Path, out_dir: str | Path, side_by_side: bool = False, episodes: list[str] | None = None,
                 scale: int = 4, storage_options: dict | None = None) -> list[str]:
    """Write one video per episode (``<id>.mp4``, or ``<id>.gif`` without an encoder) into `out_dir`; frames are
    enlarged `scale` times (nearest neighbour). Returns the paths."""
    import imageio.v2 as imageio
    from tqdm import tqdm

    store = EpisodeStore(path, mode="r", storage_options=storage_options)
    if is_make_data(store):  # simulator episodes: one frame per env step, at the simulator's rate
        if side_by_side:
            raise ValueError(f"{path}: a make-data store has no cache statistics to show side by side")
        chunk, fps = 1, float(store.attrs["generator"]["fps"])
    else:
        check_format(store)  # a rollout store of this format (what open_store checks), opened once
        chunk, fps = chunk_shape(store)[0], float(store.attrs["rollout"]["env"].get("fps", 16))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mp4 = mp4_available()
    paths = []
    for eid in tqdm(episodes or store.episode_ids(), unit="ep", desc="videos"):
        extras = store.load_episode(eid, keys=[])["attrs"]["extras"]
        ep = store.load_episode(eid, keys=["obs", "actions"] + [k for k in ("frames", "cache/computed") if k in extras])
        frames = episode_frames(ep, chunk, side_by_side)
        fps_ep = fps if "frames" in ep else fps / chunk  # without frames: only the last frame of each step
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        if mp4:
            frames = _even(frames)
            file = out / f"{eid}.mp4"
            with imageio.get_writer(file, fps=fps_ep, codec="libx264", quality=8, macro_block_size=1,
                                    ffmpeg_log_level="error", pixelformat="yuv420p") as w:
                for fr in frames:
                    w.append_data(fr)
        else:
            file = out / f"{eid}.gif"
            imageio.mimsave(file, list(frames), duration=1000 / fps_ep, loop=0)
        paths.append(str(file))
    return paths


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even width and height: pad by one pixel where odd."""
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


__all__ = ["episode_frames", "mp4_available", "skip_panel", "write_videos"]
