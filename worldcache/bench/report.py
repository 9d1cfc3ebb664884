"""What the benchmark writes: the text table (stdout), the README's markdown table, bench.json, the frontier
figure (`<stem>_pareto.png`) and the strip/GIF of the episode with the most motion (`<stem>_strip.png/.gif`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .frontier import FRONTIER_SPEED, _q, front_rows, variant
from .grid import STEPS_ONLY, display
from .measure import METRICS

SPECS = dict(zip(METRICS, (".2f", ".2f", ".2f", ".2f", ".2f", ".2f", ".2f", ".3f", ".3f", ".3f", ".2f", ".3f",
                           ".4f", ".2f")))
HEADS = dict(zip(METRICS, ("denoise x", "compute x", "step x", "computed", "ovh ms", "dec ms", "PSNR", "SSIM",
                           "PSNR ret", "SSIM ret", "PSNR/unc", "SSIM/unc", "z relL1", "z PSNR")))


def _text(key: str, v, spec: str) -> str:
    if v is None:  # PSNR between identical frames/latents, or a value that is not finite
        return "inf" if key in ("psnr_vs_uncached", "latent_psnr") else "n/a"
    return format(v, spec)


def format_table(result: dict) -> str:
    width = max([6] + [len(display(r["label"])) for r in result["rows"]])
    u, st = result["uncached"], result["settings"]
    lines = [f"{st['episodes']} episodes x {st['frames_per_episode']} frames ({st['episode_source']}); reference: "
             f"uncached at {st['num_steps']} steps, {u['denoise_ms_per_step']:.0f} ms denoising / "
             f"{u['env_step_ms']:.0f} ms per env step ({u['call_ms']:.1f} ms per model call = "
             f"{u['fixed_ms_per_call']:.1f} ms embed+head + {u['block_ms']:.1f} ms per block), "
             f"PSNR {u['psnr']:.2f} SSIM {u['ssim']:.3f} vs. ground truth",
             f"{'config':<{width}} {'steps':>5} " + " ".join(f"{HEADS[k]:>{max(len(HEADS[k]), 7)}}" for k in METRICS)]
    lines.append("-" * len(lines[-1]))
    for r in result["rows"]:
        lines.append(f"{display(r['label']):<{width}} {r['num_steps']:>5} " + " ".join(
            f"{_text(k, r[k], SPECS[k]):>{max(len(HEADS[k]), 7)}}" for k in METRICS))
    for name, pts in result.get("frontiers", {}).items():
        lines.append(f"frontier {display(name)}: " + ", ".join(
            f"{p['compute_speedup']:.2f}x {_text('psnr_vs_uncached', p['psnr_vs_uncached'], '.1f')} dB "
            f"({p['num_steps']} steps)" for p in pts))
    for fa in (result.get("frontier_at") or {}).values():
        quality = fa["quality"]
        if not any(v is not None for vals in fa[quality].values() for v in vals):
            continue  # e.g. an ablation-only run: one speed, no frontier reaches the fixed speeds
        what = "latent PSNR" if quality == "latent_psnr" else "PSNR"
        axis = "compute" if fa["speed"] == "compute_speedup" else "wall"
        lines.append(f"\n{what} vs. uncached (dB) along each frontier at fixed {axis} speedups (interpolated; n/a: "
                     "outside its span):")
        lines.append(f"  {'policy':<12} " + " ".join(f"{v:>6.1f}x" for v in fa["speeds"]))
        near = fa.get("nearest", {})  # bench.json before it was kept: none marked
        for name, vals in fa[quality].items():
            marks = near.get(name, [False] * len(vals))
            lines.append(f"  {display(name):<12} " + " ".join(  # a mark after the column: the numbers stay aligned
                f"{'n/a' if v is None else f'{v:.1f}':>7}" + ("*" if m else "") for v, m in zip(vals, marks)))
        if any(any(m) for m in near.values()):
            lines.append("  *: the frontier's end point, within 5 % of that speedup (not on the frontier there)")
    for axis, cmp in (result.get("at_worldcache_speed") or {}).items():
        if not cmp:
            continue
        lines.append(f"\nAt WorldCache's {axis} speedup ({cmp['speedup']:.2f}x, PSNR vs. uncached "
                     f"{_text('psnr_vs_uncached', cmp['psnr_vs_uncached'], '.2f')} dB), each other frontier's PSNR "
                     "vs. uncached, interpolated:")
        for name, c in cmp["baselines"].items():
            span = f"its frontier spans {c['min_speedup']:.2f}-{c['max_speedup']:.2f}x"
            lines.append(f"  {display(name):<12} " + (f"n/a ({span})" if c["psnr_vs_uncached"] is None else
                                                      f"{c['psnr_vs_uncached']:.2f} dB" + (
                                                          f" (nearest point; {span})" if c["nearest"] else "")))
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The README's "Benchmarks" table (header and rows) for a `run_bench` result."""
    head = "| config | steps | " + " | ".join(HEADS[k] for k in METRICS) + " |"
    rule = "| --- | ---: | " + " | ".join("---:" for _ in METRICS) + " |"
    return "\n".join([head, rule] + ["| " + " | ".join([display(r["label"]), str(r["num_steps"]),
                                                        *(_text(k, r[k], SPECS[k]) for k in METRICS)]) + " |"
                                     for r in result["rows"]])


PARETO_PANELS = (("compute_speedup", "psnr_vs_uncached", "PSNR vs. uncached reference (dB)"),
                 ("denoising_speedup", "psnr_vs_uncached", "PSNR vs. uncached reference (dB)"),
                 ("compute_speedup", "latent_psnr", "latent PSNR vs. uncached reference (dB)"))
SPEED_LABELS = {"compute_speedup": "compute speedup vs. uncached reference (x)",
                "denoising_speedup": "wall-clock denoising speedup, this run (x)"}


def pareto_plot(rows: list[dict], path) -> None:
    """Per panel, every row as a faint marker and each policy's frontier as a line (WorldCache bold red,
    steps-only black dashed), the compute-matched ablation as hollow stars. Left: compute speedup vs. PSNR
    against the reference; middle: the same on wall-clock speedup; right: compute speedup vs. latent PSNR."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(19, 5.5), dpi=110)
    markers = "osD^v<>ph8"
    policies = list(dict.fromkeys(variant(r) for r in rows if r["group"] == "policy" and r["policy"] != "none"))
    for k, (xkey, ykey, ylabel) in enumerate(PARETO_PANELS):
        ax = fig.add_subplot(1, len(PARETO_PANELS), k + 1)
        ok = [r for r in rows if r[xkey] is not None and r[ykey] is not None]
        fronts = front_rows(ok, xkey, ykey)
        for i, name in enumerate(policies):
            style = (dict(color="crimson", lw=2.2, marker="*", markersize=12, zorder=5) if name == "worldcache" else
                     dict(color="black", ls="--", marker="x") if name == STEPS_ONLY else
                     dict(color=f"C{i % 10}", marker=markers[i % len(markers)], alpha=0.8))
            pts = [r for r in ok if variant(r) == name and r["group"] == "policy"]
            ax.plot([r[xkey] for r in pts], [r[ykey] for r in pts], ls="none", marker=style["marker"],
                    color=style["color"], alpha=0.25, markersize=5)
            front = fronts.get(name, [])
            ax.plot([r[xkey] for r in front], [r[ykey] for r in front], label=display(name), **style)
        abl = [r for r in ok if r["group"] == "ablation"]
        if abl:
            ax.plot([r[xkey] for r in abl], [r[ykey] for r in abl], "*", color="crimson", markerfacecolor="none",
                    markersize=11, ls="none", label="WorldCache ablation (matched compute)")
            for r in abl:
                ax.annotate(r["label"].replace("worldcache ", ""), (r[xkey], r[ykey]), fontsize=6,
                            xytext=(4, -8), textcoords="offset points", color="crimson")
        ax.set_xlabel(SPEED_LABELS[xkey])
        ax.set_ylabel(ylabel)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("frontiers: lines join each policy's Pareto-optimal points over steps x settings", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def strip_panels(rows: list[dict], uncached, frames_by_label: dict, real,
                 speed_key: str = FRONTIER_SPEED) -> list[tuple[str, np.ndarray]]:
    """uncached | WorldCache (default) | best other configuration at a similar speedup | ground truth.

    "Best" is the closest to the uncached prediction (PSNR vs. uncached) among the other policies' rows within
    1.25x of WorldCache's speedup, slower ones included; with none that near, the row nearest in speedup."""
    panels = [("uncached", uncached)]
    wc = next((r for r in rows if r["label"] == "worldcache"), None)
    if wc is not None:
        panels.append((f"WorldCache {wc[speed_key] or 0:.2f}x", frames_by_label["worldcache"]))
        base = [r for r in rows if r["group"] == "policy" and r["policy"] not in ("worldcache", "none")
                and r[speed_key]]
        if base:
            sw = wc[speed_key] or 1.0
            near = [r for r in base if abs(math.log(r[speed_key] / sw)) <= math.log(1.25)]
            best = (max(near, key=lambda r: _q(r["psnr_vs_uncached"])) if near
                    else min(base, key=lambda r: abs(math.log(r[speed_key] / sw))))
            panels.append((f"{display(best['label'])} {best[speed_key]:.2f}x", frames_by_label[best["label"]]))
    panels.append(("ground truth", real))
    return panels


def save_strip(panels: list[tuple[str, np.ndarray]], png_path, gif_path, scale: int = 2,
               max_columns: int = 16) -> None:
    """PNG: one row per panel, frames left to right. GIF: the panels side by side, one GIF frame per time step."""
    from PIL import Image, ImageDraw

    t, h, w = panels[0][1].shape[:3]
    h, w = h * scale, w * scale
    cols = list(range(0, t, max(1, math.ceil(t / max_columns))))
    label_w, title_h = 150, 14
    png = Image.new("RGB", (label_w + len(cols) * w, len(panels) * h), "white")
    draw = ImageDraw.Draw(png)
    for i, (name, frames) in enumerate(panels):
        draw.text((4, i * h + h // 2 - 6), name[:32], fill="black")
        for j, c in enumerate(cols):
            png.paste(Image.fromarray(frames[c]).resize((w, h), Image.NEAREST), (label_w + j * w, i * h))
    png.save(png_path)
    gif = []
    for c in range(t):
        im = Image.new("RGB", (len(panels) * w, h + title_h), "white")
        d = ImageDraw.Draw(im)
        for i, (name, frames) in enumerate(panels):
            d.text((i * w + 2, 1), name[:w // 6], fill="black")
            im.paste(Image.fromarray(frames[c]).resize((w, h), Image.NEAREST), (i * w, title_h))
        gif.append(im)
    gif[0].save(gif_path, save_all=True, append_images=gif[1:], duration=150, loop=0)


def write_outputs(result: dict, json_out, episodes: list[dict], ref_frames, frames_by_label: dict,
                  real: np.ndarray) -> list[str]:
    """bench.json, and next to it the frontier figure and the strip of the episode with the most motion."""
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    stem = json_out.with_suffix("")
    files = [str(json_out), f"{stem}_pareto.png", f"{stem}_strip.png", f"{stem}_strip.gif"]
    json_out.write_text(json.dumps({**result, "files": files}, indent=2) + "\n")
    pareto_plot(result["rows"], files[1])
    motion = [float(np.abs(np.diff(ep["obs"].astype(np.int16), axis=0)).mean()) for ep in episodes]
    k = int(np.argmax(motion))
    panels = strip_panels(result["rows"], ref_frames[k], {lb: f[k] for lb, f in frames_by_label.items()}, real[k])
    save_strip(panels, files[2], files[3])
    return files
