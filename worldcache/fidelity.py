"""Policy-evaluation fidelity: does the world model (cached or not) rank control policies like the real simulator?

For each control policy and held-out start (env seed ``bench.HELDOUT_SEED + e``, the same starts for every policy):

1. the policy runs in the REAL MuJoCo Pusher env (`mujoco_data.real_rollout`); real return = sum of Pusher rewards;
2. its recorded actions are replayed OPEN-LOOP in the world model from the same start frame (`WorldModel.rollout`),
   uncached and with each cache policy; world-model return = sum over steps of the learned reward head
   (`worldcache.reward_head`, loaded from the checkpoint folder) on (predicted frame after the action, action).

Open loop is the only comparison possible here: the scripted controller reads simulator state (joint angles,
fingertip/object/goal positions) and the Jacobian, none of which a pixel world model provides, so the policy cannot
be run closed-loop inside the world model. Returns of a replay measure how well the model predicts the *outcome*
of a fixed action sequence, which is what ranking policies by a model needs.

Reported: mean returns per policy (real, the reward head on the REAL frames — separating the head's error from the
model's — and the world model per cache), the Spearman rank correlation between real and world-model mean returns
per cache (and over all policy x episode pairs), and whether each cache ranks the policies exactly as the first
entry of `cache` (the uncached model by default) does.

Pusher's reward includes a control cost that depends on the actions only, and noisier policies use larger torques,
so part of any ranking comes without looking at a frame. ``spearman_without_ctrl`` removes it: the exact control
cost of the actions is subtracted from every return (real, head and world model) before ranking, so what is left is
ranked by the predicted frames alone (plus whatever the head got wrong about the control cost).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .bench import HELDOUT_SEED, needs_calibration, warm_up

DEFAULT_POLICIES = ("scripted:0", "scripted:0.3", "scripted:0.6", "scripted:1.0", "random")
CTRL_WEIGHT = 0.1  # Pusher-v5's reward_control_weight: reward_ctrl = -0.1 * |a|^2, known from the actions alone


def parse_policy(spec: str) -> tuple[str, float | None, str]:
    """``"scripted:0.3"`` -> ("scripted", 0.3, "scripted noise=0.3"); ``"random"`` -> ("random", None, "random")."""
    name, _, noise = str(spec).partition(":")
    if not noise:
        return name, None, name
    return name, float(noise), f"{name} noise={float(noise):g}"


def _spearman(a, b) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    with warnings.catch_warnings():  # constant input (e.g. 2 tied policies): rho is undefined -> None
        warnings.simplefilter("ignore")
        rho, p = spearmanr(a, b)
    ok = lambda v: float(v) if v is not None and math.isfinite(v) else None  # noqa: E731
    return ok(rho), ok(p)


def evaluate_policies(checkpoint=None, episodes: int = 5, steps: int = 48, policies=DEFAULT_POLICIES, seed: int = 0,
                      cache=("none", "worldcache"), num_steps: int | None = None, device: str = "cpu",
                      reward_head=None, json_out=None, verbose: bool = True) -> dict:
    """Rank `policies` (names ``scripted[:noise]``, ``random``, ``mixed[:noise]``) by real and by world-model return.

    `steps` must be a multiple of the model's chunk. `cache`: cache policy names or YAML files; the first is the
    reference for ``same_ranking``. `reward_head`: a folder with ``reward_head.safetensors`` (default: the
    checkpoint folder). Returns a dict with per-policy returns, ``spearman``, ``spearman_all``, ``same_ranking``.
    """
    from scipy.stats import rankdata

    from .cache import load_policy
    from .mujoco_data import PusherRenderer, real_rollout
    from .reward_head import RewardHead
    from .world_model import BUNDLED, WorldModel

    model = WorldModel.from_pretrained(checkpoint, device=device)
    s = model.spec
    if steps < s.chunk or steps % s.chunk:
        raise ValueError(f"steps={steps} must be a positive multiple of the model's chunk ({s.chunk})")
    if episodes < 1 or not policies or not cache:
        raise ValueError("need episodes >= 1, at least one policy and at least one cache entry")
    head = RewardHead.load(reward_head or checkpoint or BUNDLED)
    caches = {str(c): load_policy(c) for c in cache}
    warm_up(model, [p for p in caches.values() if needs_calibration(p)], num_steps, seed)  # MagCache w/o ratios

    specs = [parse_policy(p) for p in policies]
    real = np.zeros((len(specs), episodes))
    head_real, ctrl = np.zeros_like(real), np.zeros_like(real)
    wm = {c: np.zeros_like(real) for c in caches}
    with PusherRenderer(s.height, s.width, max_episode_steps=steps) as renderer:
        for i, (name, noise, label) in enumerate(specs):
            for e in range(episodes):
                ep = real_rollout(name, HELDOUT_SEED + e, steps, noise=noise, renderer=renderer)
                real[i, e] = ep["rewards"].sum()
                ctrl[i, e] = -CTRL_WEIGHT * float((ep["actions"].astype(np.float64) ** 2).sum())
                head_real[i, e] = head.predict(ep["obs"][1:], ep["actions"]).sum()
                for c, policy in caches.items():
                    frames, _ = model.rollout(ep["obs"][:1], ep["actions"][None], policy=policy,
                                              num_steps=num_steps, seed=seed + e)
                    policy.detach()
                    wm[c][i, e] = head.predict(frames[0].cpu().numpy(), ep["actions"]).sum()
            if verbose:
                print(f"{label}: real {real[i].mean():.2f}, " + ", ".join(
                    f"wm[{c}] {wm[c][i].mean():.2f}" for c in caches), flush=True)

    ref = next(iter(caches))
    mean = lambda a: a.mean(axis=1)  # noqa: E731
    result = {
        "policies": [{"policy": label, "real_return": float(real[i].mean()), "real_returns": real[i].tolist(),
                      "head_on_real_return": float(head_real[i].mean()), "ctrl_return": float(ctrl[i].mean()),
                      "wm_return": {c: float(wm[c][i].mean()) for c in caches},
                      "wm_returns": {c: wm[c][i].tolist() for c in caches}}
                     for i, (_, _, label) in enumerate(specs)],
        "spearman": {c: _spearman(mean(real), mean(wm[c]))[0] for c in caches},
        "spearman_p": {c: _spearman(mean(real), mean(wm[c]))[1] for c in caches},
        "spearman_all": {c: _spearman(real.ravel(), wm[c].ravel())[0] for c in caches},
        "spearman_head_on_real": _spearman(mean(real), mean(head_real))[0],
        "spearman_without_ctrl": {c: _spearman(mean(real - ctrl), mean(wm[c] - ctrl))[0] for c in caches},
        "spearman_head_on_real_without_ctrl": _spearman(mean(real - ctrl), mean(head_real - ctrl))[0],
        "same_ranking": {c: bool(np.array_equal(rankdata(mean(wm[c])), rankdata(mean(wm[ref])))) for c in caches},
        "reference_cache": ref,
        "settings": {"checkpoint": str(checkpoint) if checkpoint else "bundled", "episodes": episodes,
                     "steps": steps, "num_steps": num_steps or s.num_steps, "seed": seed,
                     "env_seeds": [HELDOUT_SEED + e for e in range(episodes)], "replay": "open-loop"},
    }
    if verbose:
        print(format_table(result))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict) -> str:
    caches = list(result["spearman"])
    fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
    head = f"{'policy':<22} {'real':>9} {'head(real)':>10} " + " ".join(f"{'wm/' + c:>14}" for c in caches)
    lines = [f"mean returns over {result['settings']['episodes']} episodes of {result['settings']['steps']} steps "
             f"(world model: open-loop replay of the real actions)", head, "-" * len(head)]
    for p in result["policies"]:
        lines.append(f"{p['policy']:<22} {p['real_return']:>9.2f} {p['head_on_real_return']:>10.2f} "
                     + " ".join(f"{p['wm_return'][c]:>14.2f}" for c in caches))
    lines.append(f"{'Spearman vs real':<22} {'':>9} {fmt(result['spearman_head_on_real']):>10} "
                 + " ".join(f"{fmt(result['spearman'][c]):>14}" for c in caches))
    lines.append(f"{'Spearman (all eps)':<22} {'':>9} {'':>10} "
                 + " ".join(f"{fmt(result['spearman_all'][c]):>14}" for c in caches))
    lines.append(f"{'Spearman, ctrl removed':<22} {'':>9} {fmt(result['spearman_head_on_real_without_ctrl']):>10} "
                 + " ".join(f"{fmt(result['spearman_without_ctrl'][c]):>14}" for c in caches))
    ref = result["reference_cache"]
    lines.append(f"{'same ranking as ' + ref:<22} {'':>9} {'':>10} "
                 + " ".join(f"{'yes' if result['same_ranking'][c] else 'NO':>14}" for c in caches))
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The README's policy-evaluation table rows (plus the Spearman and same-ranking rows)."""
    caches = list(result["spearman"])
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [f"| {p['policy']} | {p['real_return']:.2f} | {p['head_on_real_return']:.2f} | "
            + " | ".join(f"{p['wm_return'][c]:.2f}" for c in caches) + " |" for p in result["policies"]]
    rows.append(f"| Spearman vs. real | | {fmt(result['spearman_head_on_real'])} | "
                + " | ".join(fmt(result["spearman"][c]) for c in caches) + " |")
    rows.append(f"| Spearman, control cost removed | | {fmt(result['spearman_head_on_real_without_ctrl'])} | "
                + " | ".join(fmt(result["spearman_without_ctrl"][c]) for c in caches) + " |")
    rows.append(f"| same ranking as {result['reference_cache']} | | | "
                + " | ".join("yes" if result["same_ranking"][c] else "no" for c in caches) + " |")
    return "\n".join(rows)
