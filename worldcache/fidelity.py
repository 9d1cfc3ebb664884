"""Policy-evaluation fidelity: does the world model (cached or not) rank control policies like the real simulator?

For each control policy and held-out start (env seed ``bench.HELDOUT_SEED + e``, or from `first_seed`; the same
starts for every policy):

1. the policy runs in the REAL MuJoCo Pusher env from the real observations (`mujoco_data.real_rollout`); real
   return = sum of the task rewards (`task.task_reward` on the true positions);
2. its recorded actions are replayed OPEN-LOOP in the world model from the same start frame (`WorldModel.rollout`),
   uncached and with each cache policy, from the noise seeds `derived_seed(seed, env_seed) + chunk`; world-model
   return = the checkpoint's state decoder reading positions off each predicted frame, `task_reward` on them plus
   the exact control cost of each action (the env's reward).
   ``real_cond`` instead predicts each chunk from the simulator's frames before it: a diagnostic of what
   compounding costs the ranking.

Open loop is the only comparison possible here: the policies read simulator state (fingertip, object and goal
positions), which a pixel world model does not provide, so they cannot run closed-loop inside it. Returns of a
replay measure how well the model predicts the *outcome* of a fixed action sequence, which is what ranking
policies by a model needs.

The default policy set, ``equal-cost``, holds policies whose every action has the same norm (`EQUAL_NORM`), so
their control cost is identical and only the frames can rank them. ``noise-levels`` is the older set of one
controller at growing noise (its policies differ in control cost too; ``spearman_without_ctrl`` removes that).

Reported: mean returns per policy (real, the decoded reward on the REAL frames — separating the decoder's error
from the model's — and the world model per cache), the Spearman rank correlation between real and decoded mean
returns (on real frames and per cache on predicted frames, and over all policy x episode pairs), and whether each
cache ranks the policies exactly as the first entry of `cache` (the uncached model by default) does; and the returns
split into the reward's position terms (`format_terms`), which say whether the model or its reader is wrong. A
Spearman of mean returns over a few starts moves a lot with the starts, so each comes with a 90 % bootstrap interval
over them (``spearman_ci90``), and `compare_results` compares two results on the same starts pairwise.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from .bench import HELDOUT_SEED, needs_calibration, warm_up
from .bench.episodes import check_simulable
from .seeding import derived_seed

EQUAL_NORM = 0.5  # |a| of every action of the equal-cost policies: 2.5 cm per 0.05 s step (x20 actions)
POLICY_SETS = {
    "equal-cost": ("push", "push:0.3", "push:0.6", "hover", "to-goal", "fixed", "random-dir", "away"),
    "noise-levels": ("scripted:0", "scripted:0.3", "scripted:0.6", "scripted:1.0", "random"),
}
DEFAULT_POLICIES = ("equal-cost",)
EQUAL_COST = ("push", "hover", "to-goal", "fixed", "random-dir", "away")  # names of the equal-norm policies
FIXED_DIRECTION = (0.0, 1.0, 0.0)  # "fixed": sideways, along the table
NOISE_SEEDING = "derived_seed(seed, env_seed) + chunk"  # recorded: results of the older seeds never pool with these


class EqualNormPolicy:
    """An end-effector policy whose every action has norm `EQUAL_NORM`: a direction, scaled.

    ``push``: the scripted reach-and-push controller's direction (with ``noise``: its noisy variant's);
    ``hover``: toward the object but at travel height, so it never pushes; ``to-goal``: straight toward the goal
    at the object's height; ``fixed``: one fixed direction; ``random-dir``: a uniformly random direction each step;
    ``away``: horizontally away from the object. Where a direction is undefined (already at the target), the
    previous one is kept."""

    def __init__(self, name: str, env, rng: np.random.Generator, noise: float | None = None):
        from .mujoco_data import ScriptedPolicy

        if name not in EQUAL_COST:
            raise ValueError(f"unknown equal-cost policy {name!r}; choose from {EQUAL_COST}")
        if noise is not None and name != "push":
            raise ValueError(f"only 'push' takes a noise level, got {name}:{noise}")
        self.name, self.rng = name, rng
        self.scripted = ScriptedPolicy(env, rng, noise or 0.0)
        self._dir = np.array([0.0, 0.0, -1.0])

    def direction(self, obs: np.ndarray) -> np.ndarray:
        from .mujoco_data import GOAL, OBJ, TIP, Z_HOVER

        tip, obj, goal = obs[TIP], obs[OBJ], obs[GOAL]
        if self.name == "push":
            return self.scripted(obs).astype(np.float64)
        if self.name == "hover":
            return np.r_[obj[:2], Z_HOVER] - tip
        if self.name == "to-goal":
            return np.r_[goal[:2], obj[2]] - tip
        if self.name == "fixed":
            return np.asarray(FIXED_DIRECTION)
        if self.name == "random-dir":
            return self.rng.standard_normal(3)
        return np.r_[tip[:2] - obj[:2], 0.0]  # away

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        d = self.direction(obs)
        n = np.linalg.norm(d)
        if n > 1e-6:
            self._dir = d / n
        return (EQUAL_NORM * self._dir).astype(np.float32)


NOISY = ("scripted", "mixed", "varied", "varied-wide", "push")  # the control policies that take a noise level


def parse_policy(spec: str) -> tuple[str, float | None, str]:
    """``"scripted:0.3"`` -> ("scripted", 0.3, "scripted noise=0.3"); ``"random"`` -> ("random", None, "random").
    Refuses an unknown name, and a noise level that is not a number in [0, 1] or that the policy would ignore."""
    from .mujoco_data import POLICIES

    name, colon, noise = str(spec).partition(":")
    if colon and noise.isidentifier() and name not in POLICIES + EQUAL_COST:  # "module:factory", one's own
        _control_factory(str(spec))
        return str(spec), None, str(spec)
    if name not in POLICIES + EQUAL_COST:
        raise _unknown_control(name)
    if not colon:
        return name, None, name
    if name not in NOISY:
        raise ValueError(f"{spec!r}: {name} takes no noise level (those that do: {NOISY})")
    try:
        level = float(noise)
    except ValueError:
        level = float("nan")
    if not 0 <= level <= 1:
        raise ValueError(f"{spec!r}: the noise level after ':' must be a number in [0, 1]")
    return name, level, f"{name} noise={level:g}"


def expand_policies(policies) -> list[str]:
    """Policy names, with set names (`POLICY_SETS`) replaced by their policies (one name alone is a list of one)."""
    out = []
    for p in ([policies] if isinstance(policies, str) else policies):
        out.extend(POLICY_SETS.get(p, (p,)))
    return out


def _control_factory(spec: str):
    """``"package.module:factory"`` -> the factory, imported, or ValueError saying what is missing."""
    import importlib

    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ValueError(f"control policy {spec!r}: cannot import {module} ({e}; a file of your own: "
                         f"PYTHONPATH=its/folder)") from None
    except AttributeError:
        raise ValueError(f"control policy {spec!r}: {module} has no {attr}") from None
    if not callable(factory):
        raise ValueError(f"control policy {spec!r}: {attr} is not callable")
    return factory


def make_control(name: str, noise: float | None, env, seed: int):
    """The policy for one real episode (seeded from the episode's env seed, as `real_rollout` seeds named ones).
    One's own, ``"package.module:factory"``: ``factory(env, rng)`` -> ``obs (23,) -> action (3,)``, called per
    episode with the Pusher renderer (its ``action_space``, ``dt``) and that episode's generator."""
    from .mujoco_data import POLICIES, make_policy

    rng = np.random.default_rng([seed, 1])
    if name in EQUAL_COST:
        return EqualNormPolicy(name, env, rng, noise)
    if name in POLICIES:
        return make_policy(name, env, rng, noise)
    if ":" in name:
        policy = _control_factory(name)(env, rng)
        if not callable(policy):
            raise ValueError(f"control policy {name!r}: the factory returned {type(policy).__name__}, not a "
                             f"policy obs (23,) -> action (3,)")
        return policy
    raise _unknown_control(name)


def _unknown_control(name: str) -> ValueError:
    from .mujoco_data import POLICIES

    return ValueError(f"unknown control policy {name!r}; choose from {POLICIES + EQUAL_COST} or a set "
                      f"{tuple(POLICY_SETS)}")


def _spearman(a, b) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    with warnings.catch_warnings():  # constant input (e.g. 2 tied policies): rho is undefined -> None
        warnings.simplefilter("ignore")
        rho, p = spearmanr(a, b)
    ok = lambda v: float(v) if v is not None and math.isfinite(v) else None  # noqa: E731
    return ok(rho), ok(p)


BOOTSTRAP_DRAWS = 2000


def spearman_draws(real, wm, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> np.ndarray:
    """Spearman of the mean returns of `real` and `wm` ((policies, episodes) arrays) over `draws` bootstrap
    resamples of the episodes (the same resample for every policy; NaN where a draw's means tie throughout, and
    in every draw where a return is not finite: the point figure is undefined then, and so is its spread).

    How far a ranking over a few starts could move with other starts. The resamples depend only on `seed` and the
    episode count, so two results on the same starts are resampled alike: their draw-by-draw difference is a paired
    comparison (`compare_results`)."""
    from scipy.stats import rankdata

    real, wm = np.asarray(real, dtype=float), np.asarray(wm, dtype=float)
    if draws < 1 or real.ndim != 2 or real.shape != wm.shape or real.shape[1] < 1:
        raise ValueError(f"need draws >= 1 and two (policies, episodes) arrays of one shape; got draws={draws}, "
                         f"{real.shape} and {wm.shape}")
    if not (np.isfinite(real).all() and np.isfinite(wm).all()):  # draws that miss a NaN episode are not an interval
        return np.full(draws, np.nan)
    idx = np.random.default_rng(seed).integers(0, real.shape[1], (draws, real.shape[1]))
    r, w = (rankdata(a[:, idx].mean(axis=-1).T, axis=1) for a in (real, wm))  # (draws, policies) ranks
    r, w = r - r.mean(axis=1, keepdims=True), w - w.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r * w).sum(axis=1) / np.sqrt((r * r).sum(axis=1) * (w * w).sum(axis=1))


def _interval(draws: np.ndarray) -> list[float] | None:
    ok = draws[np.isfinite(draws)]
    return [float(v) for v in np.percentile(ok, [5, 95])] if ok.size else None


def read_result(path, keys=("policies", "spearman")) -> dict:
    """An `evaluate_policies` JSON (``--json``) with `keys` (what the caller reads), or ValueError saying what the
    file is not."""
    import json
    from pathlib import Path

    if Path(path).is_dir():
        raise ValueError(f"{path}: a folder; give a worldcache evaluate-policies --json file")
    try:
        res = json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e}); give a worldcache evaluate-policies --json file") from None
    missing = [k for k in keys if not isinstance(res, dict) or k not in res]
    if missing:
        raise ValueError(f"{path}: not an evaluate-policies result (no {', '.join(missing)}); give a worldcache "
                         f"evaluate-policies --json file")
    return res


def compare_results(a: dict, b: dict, cache: str = "none", draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict:
    """Paired bootstrap of two `evaluate_policies` results on the same starts and policies (e.g. two checkpoints):
    the Spearman of mean returns of B minus A for `cache`, over the same resamples of the starts. Returns
    {"a", "b" (the point figures), "difference_mean", "difference_ci90", "p_b_lower", "p_b_higher", "draws"}."""
    def arrays(res, name):
        if cache not in res["spearman"]:
            raise ValueError(f"{name} has no {cache!r} rows; it has {sorted(res['spearman'])}")
        return (np.array([p["real_returns"] for p in res["policies"]]),
                np.array([p["wm_returns"][cache] for p in res["policies"]]))

    (ra, wa), (rb, wb) = arrays(a, "A"), arrays(b, "B")
    pa, pb = ([p["policy"] for p in r["policies"]] for r in (a, b))
    sa, sb = (r.get("settings", {}).get("env_seeds") for r in (a, b))
    if pa != pb:
        raise ValueError(f"A and B must rank the same policies in one order: A has {pa}, B {pb}")
    if sa is not None and sb is not None and sa != sb:
        raise ValueError(f"A and B must be measured on the same starts: A's env seeds are {_seed_span(sa)}, "
                         f"B's {_seed_span(sb)}")
    if ra.shape != rb.shape or not np.allclose(ra, rb):
        raise ValueError("A and B must rank the same policies on the same starts (their real returns differ)")
    d = spearman_draws(rb, wb, draws, seed) - spearman_draws(ra, wa, draws, seed)
    d = d[np.isfinite(d)]
    if not d.size:
        raise ValueError(f"every resample ties A's or B's {cache!r} mean returns throughout, or a return is not "
                         f"finite: no Spearman to compare")
    return {"a": a["spearman"][cache], "b": b["spearman"][cache], "difference_mean": float(d.mean()),
            "difference_ci90": _interval(d), "p_b_lower": float((d < 0).mean()),
            "p_b_higher": float((d > 0).mean()), "draws": int(d.size)}


def evaluate_policies(checkpoint=None, episodes: int = 5, steps: int = 48, policies=DEFAULT_POLICIES, seed: int = 0,
                      cache=("none", "worldcache"), num_steps: int | None = None, device: str = "cpu",
                      decoder=None, json_out=None, verbose: bool = True, compile: bool = False,
                      first_seed: int = HELDOUT_SEED, real_cond: bool = False) -> dict:
    """Rank `policies` (set names of `POLICY_SETS`, or ``push[:noise]``, ``hover``, ``to-goal``, ``fixed``,
    ``random-dir``, ``away``, ``scripted[:noise]``, ``random``, ``mixed[:noise]``) by real and by decoded return.

    `steps` must be a multiple of the model's chunk. `cache`: cache policy names or YAML files; the first is the
    reference for ``same_ranking``. `decoder`: a folder with ``state_decoder.safetensors`` (default: the checkpoint
    folder). Returns a dict with per-policy returns (and their position terms), ``spearman``,
    ``spearman_decoded_real``, ``spearman_all``, ``same_ranking``. `decoder` may also be a list of folders (`json_out`
    then a list of as many paths, or None): each reads the same rollouts, and the result is a list, one per
    decoder, each equal to a call with that decoder alone, so readers compare pairwise (`compare_results`) at the
    cost of one call. `compile`: torch.compile the DiT's blocks
    (`WorldModel.compile_dit`). `first_seed`: env seed of the first start (default the held-out ``HELDOUT_SEED``;
    e.g. ``TUNING_SEED`` to try a change on starts that the reported figures do not use). `real_cond`: a diagnostic,
    not a policy evaluation (it needs the simulator's frames): every chunk is predicted from the simulator's frames
    before it, not from the model's own (`quality.teacher_forced`), so the gap to the open-loop figures is what
    compounding costs the ranking.
    """
    from .cache import load_policy
    from .mujoco_data import GL_BACKEND, GOAL, MUJOCO_VERSION, OBJ, TIP, PusherRenderer, control_cost, real_rollout, \
        reward_from_terms, reward_terms
    from .quality import teacher_forced
    from .rollouts.identity import model_sha256
    from .state_decoder import CONFIG_FILE, WEIGHTS_FILE, StateDecoder
    from .world_model import BUNDLED, WorldModel, read_spec

    several = isinstance(decoder, (list, tuple))  # before the model loads: bad input fails at once
    folders = list(decoder) if several else [decoder]
    outs = [None] * len(folders) if json_out is None else \
        list(json_out) if isinstance(json_out, (list, tuple)) else [json_out]
    if not folders or len(outs) != len(folders):
        raise ValueError(f"{len(folders)} decoder(s) need as many JSON paths (or none), got {len(outs)}: {outs}")
    names = expand_policies(policies)
    cache = [cache] if isinstance(cache, (str, os.PathLike)) else cache  # one name or YAML path
    if episodes < 1 or not names or not cache:
        raise ValueError("need episodes >= 1, at least one policy and at least one cache entry")
    specs = [parse_policy(p) for p in names]  # bad input fails here, before the model loads
    caches = {str(c): load_policy(c) for c in cache}
    check_simulable(read_spec(checkpoint), "evaluate-policies ranks Pusher's control policies only")
    model = WorldModel.from_pretrained(checkpoint, device=device, compile=compile)
    model_id = model_sha256(checkpoint or BUNDLED)  # the files as loaded, before the long run
    s = model.spec
    if steps < s.chunk or steps % s.chunk:
        raise ValueError(f"steps={steps} must be a positive multiple of the model's chunk ({s.chunk})")
    readers = [Path(d or checkpoint or BUNDLED) for d in folders]
    decs = [StateDecoder.load(r, device) for r in readers]
    dec_ids = [model_sha256({n: (r / n).read_bytes() for n in (CONFIG_FILE, WEIGHTS_FILE)}) for r in readers]
    for dec, r in zip(decs, readers):
        dec.check_frames(s, r)
        dec.check_scene(s.scene, r)

    real = np.zeros((len(specs), episodes))
    ctrl, real_terms = np.zeros_like(real), np.zeros((*real.shape, 2))
    dec_real = [np.zeros_like(real) for _ in decs]  # one per decoder from here on
    wm = [{c: np.zeros_like(real) for c in caches} for _ in decs]
    terms = [{"real": real_terms, "decoded_real": np.zeros((*real.shape, 2)),  # summed per episode
              "wm": {c: np.zeros((*real.shape, 2)) for c in caches}} for _ in decs]

    def read(frames, actions, k):  # decoder k's return and its position terms, each summed over the episode
        t = decs[k].terms(frames)
        return reward_from_terms(t, actions).sum(), t.sum(0)

    with PusherRenderer.for_scene(s.scene, s.height, s.width, max_episode_steps=steps) as renderer:
        for name, noise, _ in specs:  # a bad name fails before any rollout
            make_control(name, noise, renderer, 0)
        warm_up(model, [p for p in caches.values() if needs_calibration(p)], num_steps, seed)  # MagCache ratios
        for i, (name, noise, label) in enumerate(specs):
            for e in range(episodes):
                env_seed = first_seed + e
                # the noise follows the env seed, not the start's place in this call, so starts split over calls
                # pool exactly; hashed, so no start's chunk c + 1 draws another start's chunk c
                noise_seed = derived_seed(seed, env_seed)
                ep = real_rollout(make_control(name, noise, renderer, env_seed), env_seed, steps, renderer=renderer)
                real[i, e] = ep["rewards"].sum()
                ctrl[i, e] = -float(control_cost(ep["actions"]).sum())
                st = ep["state"][1:]
                real_terms[i, e] = reward_terms(st[:, TIP], st[:, OBJ], st[:, GOAL]).sum(0)
                for k in range(len(decs)):
                    dec_real[k][i, e], terms[k]["decoded_real"][i, e] = read(ep["obs"][1:], ep["actions"], k)
                for c, policy in caches.items():
                    if real_cond:
                        frames = teacher_forced(model, ep["obs"][:1], ep["actions"][None], ep["obs"][None, 1:],
                                                policy, num_steps, noise_seed, batch=1)[0]
                    else:
                        frames = model.rollout(ep["obs"][:1], ep["actions"][None], policy=policy,
                                               num_steps=num_steps, seed=noise_seed)[0][0].cpu().numpy()
                    policy.detach()
                    for k in range(len(decs)):
                        wm[k][c][i, e], terms[k]["wm"][c][i, e] = read(frames, ep["actions"], k)
            if verbose:
                for k, d in enumerate(folders):
                    print(f"{label}: real {real[i].mean():.2f}, " + (f"[decoder {d}] " if several else "")
                          + f"decoded(real) {dec_real[k][i].mean():.2f}, "
                          + ", ".join(f"wm[{c}] {wm[k][c][i].mean():.2f}" for c in caches), flush=True)

    results = []
    for k, d in enumerate(folders):
        settings = {"checkpoint": str(checkpoint) if checkpoint else "bundled",
                    "decoder": str(d) if d else "the checkpoint's", "model_sha256": model_id,
                    "decoder_sha256": dec_ids[k], "episodes": episodes, "steps": steps,
                    "num_steps": num_steps or s.num_steps, "seed": seed, "policies": names,
                    "env_seeds": [first_seed + e for e in range(episodes)],
                    "replay": "real-cond" if real_cond else "open-loop", "noise": NOISE_SEEDING,
                    # each cache by what it ran with (a name or YAML path alone could hide an edit); compile and
                    # device for the record (they move results by float rounding only); the MuJoCo release moves
                    # the real episodes and the GL backend may move their frames (`mujoco_data.generate`), so
                    # results of two do not pool
                    "caches": {c: {"policy": p.name, **p.settings()} for c, p in caches.items()},
                    "compile": compile, "device": device, "mujoco": MUJOCO_VERSION, "gl": GL_BACKEND}
        results.append(summarize([label for _, _, label in specs], real, dec_real[k], ctrl, wm[k], settings,
                                 terms[k]))
        if verbose:
            print((f"decoder {d}:\n" if several else "") + format_table(results[k]) + "\n" + format_terms(results[k]))
        _save(results[k], outs[k])
    return results if several else results[0]


def _save(result: dict, json_out) -> dict:
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarize(labels: list[str], real, dec_real, ctrl, wm: dict, settings: dict, terms: dict | None = None) -> dict:
    """The result of `evaluate_policies` from its per-episode returns ((policies, episodes) arrays; `wm`: one per
    cache, the first the reference for ``same_ranking``): mean returns, Spearman figures, the bootstrap interval
    (seeded with ``settings["seed"]``) and the settings. `terms`: the returns' position terms
    (`task.TERMS`), {"real", "decoded_real": (policies, episodes, 2), "wm": {cache: the same}}; kept per
    policy as means (``terms``) and per episode (``terms_episodes``)."""
    from scipy.stats import rankdata

    from .task import TERMS

    real, dec_real, ctrl = (np.asarray(a, dtype=float) for a in (real, dec_real, ctrl))
    wm = {c: np.asarray(a, dtype=float) for c, a in wm.items()}
    ref, seed = next(iter(wm)), settings["seed"]
    mean = lambda a: a.mean(axis=1)  # noqa: E731
    policies = [{"policy": label, "real_return": float(real[i].mean()), "real_returns": real[i].tolist(),
                 "decoded_real_return": float(dec_real[i].mean()), "decoded_real_returns": dec_real[i].tolist(),
                 "ctrl_return": float(ctrl[i].mean()), "ctrl_returns": ctrl[i].tolist(),
                 "wm_return": {c: float(wm[c][i].mean()) for c in wm},
                 "wm_returns": {c: wm[c][i].tolist() for c in wm}}
                for i, label in enumerate(labels)]
    if terms is not None:
        per = lambda f: {"real": f(terms["real"]), "decoded_real": f(terms["decoded_real"]),  # noqa: E731
                         "wm": {c: f(terms["wm"][c]) for c in wm}}
        for i, p in enumerate(policies):
            p["terms"] = per(lambda a: np.asarray(a, dtype=float)[i].mean(axis=0).tolist())
            p["terms_episodes"] = per(lambda a: np.asarray(a, dtype=float)[i].tolist())
    return {
        "policies": policies,
        "term_names": list(TERMS) if terms is not None else None,
        "spearman": {c: _spearman(mean(real), mean(wm[c]))[0] for c in wm},
        "spearman_p": {c: _spearman(mean(real), mean(wm[c]))[1] for c in wm},
        "spearman_all": {c: _spearman(real.ravel(), wm[c].ravel())[0] for c in wm},
        "spearman_ci90": {c: _interval(spearman_draws(real, wm[c], seed=seed)) for c in wm},
        "spearman_decoded_real": _spearman(mean(real), mean(dec_real))[0],
        "spearman_without_ctrl": {c: _spearman(mean(real - ctrl), mean(wm[c] - ctrl))[0] for c in wm},
        "spearman_decoded_real_without_ctrl": _spearman(mean(real - ctrl), mean(dec_real - ctrl))[0],
        # None (n/a) where a mean return is not finite: a ranking is undefined then, as the Spearman figures are
        "same_ranking": {c: bool(np.array_equal(rankdata(mean(wm[c])), rankdata(mean(wm[ref]))))
                         if np.isfinite(mean(wm[c])).all() and np.isfinite(mean(wm[ref])).all() else None for c in wm},
        "equal_control_cost": bool(np.ptp(ctrl) < 1e-6 * max(1.0, np.abs(ctrl).max())),
        "reference_cache": ref,
        "settings": settings,
    }


def pool_results(results: list[dict], json_out=None) -> dict:
    """One result from `evaluate_policies` results on disjoint starts with the same settings otherwise (e.g. starts
    split over calls or machines with ``first_seed``), its episodes in env-seed order: equal to one call over all
    the starts, since a start's returns depend on its env seed only. Results that name their model and state
    decoder by the files' sha256 pool across paths (a copy on another machine); older ones by the paths."""
    if len(results) < 2:
        raise ValueError("pooling needs at least two results")

    # the files' hashes name the model and the reader where every result saved them: the same ones at another path
    # pool; else (a result of older code among them) the paths do, as they did then
    hashed = all("model_sha256" in r["settings"] for r in results)
    names = ("checkpoint", "decoder") if hashed else ("model_sha256", "decoder_sha256")

    def same(r):
        return {k: v for k, v in r["settings"].items()
                if k not in ("env_seeds", "episodes", "compile", "device", *names)}
    b = same(results[0])
    for i, r in enumerate(results):
        a = same(r)
        if a != b or [p["policy"] for p in r["policies"]] != \
                [p["policy"] for p in results[0]["policies"]] or list(r["spearman"]) != list(results[0]["spearman"]):
            # name what differs ("not recorded": by older code, say)
            diff = {k: (a.get(k, "not recorded"), b.get(k, "not recorded")) for k in sorted(a.keys() | b.keys())
                    if k not in a or k not in b or a[k] != b[k]}
            raise ValueError(f"result {i} differs from result 0 in its settings (result {i}'s, result 0's): {diff}"
                             if diff else f"result {i} differs from result 0 in its control policies or caches")
        if "decoded_real_returns" not in r["policies"][0]:
            raise ValueError(f"result {i} has no per-episode decoded and control returns (made before they were "
                             "saved): measure it again")
    seeds = [e for r in results for e in r["settings"]["env_seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the results share starts (env seeds {sorted({e for e in seeds if seeds.count(e) > 1})})")
    order = np.argsort(seeds, kind="stable")
    joined = lambda get: np.concatenate(  # noqa: E731
        [[get(p) for p in r["policies"]] for r in results], axis=1)[:, order]
    caches = list(results[0]["spearman"])
    settings = {**{k: v for k, v in results[0]["settings"].items() if hashed or k not in names},  # hashes only
                "episodes": len(seeds), "env_seeds": sorted(seeds)}                               # all checked
    terms = None  # results saved before the terms were kept pool without them
    if all("terms_episodes" in r["policies"][0] for r in results):
        terms = {k: joined(lambda p: p["terms_episodes"][k]) for k in ("real", "decoded_real")}
        terms["wm"] = {c: joined(lambda p: p["terms_episodes"]["wm"][c]) for c in caches}
    return _save(summarize([p["policy"] for p in results[0]["policies"]], joined(lambda p: p["real_returns"]),
                           joined(lambda p: p["decoded_real_returns"]), joined(lambda p: p["ctrl_returns"]),
                           {c: joined(lambda p: p["wm_returns"][c]) for c in caches}, settings, terms), json_out)


def fmt(v: float | None, spec: str = ".2f") -> str:
    """A Spearman figure for a table; None (all policies tied, so undefined) reads "n/a"."""
    return "n/a" if v is None else format(v, spec)


REPLAYS = {"open-loop": "open-loop replay of the real actions",
           "real-cond": "the real actions, each chunk from the simulator's frames before it"}


FEW_STARTS = 5  # fewer starts have at most C(2n - 1, n) = 35 distinct bootstrap resamples: no interval to speak of
NEAR_TIE = 0.01  # a column whose mean returns (control cost removed) span under 1 % of the real ones' ranks near-ties


def caveats(result: dict) -> list[str]:
    """What makes `result`'s Spearman figures weaker than they read: too few starts for the interval over them, or a
    column (the decoder on real frames, a cache on predicted ones) whose mean returns barely differ between policies,
    so that its ranking orders near-ties (a barely trained or collapsed model). Control cost is removed first: it is
    exact, so it would hide a reader that sees nothing."""
    n, out = result["settings"]["episodes"], []
    if n < FEW_STARTS:
        out.append(f"only {n} start{'s' if n > 1 else ''}: a Spearman over so few moves a lot with the starts and its "
                   f"90 % interval has few distinct resamples; measure {FEW_STARTS} or more (pool-fidelity joins "
                   f"calls on disjoint starts)")
    spread = lambda get: float(np.ptp([get(p) - p["ctrl_return"] for p in result["policies"]]))  # noqa: E731
    real = spread(lambda p: p["real_return"])
    columns = {"dec(real)": lambda p: p["decoded_real_return"],
               **{f"wm/{c}": (lambda p, c=c: p["wm_return"][c]) for c in result["spearman"]}}
    for name, get in columns.items():
        if real > 0 and spread(get) < NEAR_TIE * real:
            out.append(f"{name}'s mean returns (control cost removed) span {spread(get):.2g} across the policies, the "
                       f"real ones {real:.3g}: its ranking orders near-ties (is the model or decoder trained?)")
    return out


def _yes(v: bool | None, no: str) -> str:
    return "n/a" if v is None else "yes" if v else no


def _seed_span(seeds) -> str:
    """Env seeds as ``a-b`` where consecutive, else the list."""
    seeds = list(seeds)
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else ", ".join(map(str, seeds))


def format_table(result: dict) -> str:
    caches, st = list(result["spearman"]), result["settings"]
    head = f"{'policy':<22} {'real':>9} {'dec(real)':>10} " + " ".join(f"{'wm/' + c:>14}" for c in caches)
    seeds = st.get("env_seeds") or []
    source = ", ".join(filter(None, (
        f"checkpoint {st['checkpoint']}" if "checkpoint" in st else "",
        f"env seeds {_seed_span(seeds)}" if seeds else "",
        f"{st['num_steps']} denoising steps" if "num_steps" in st else "",
        f"noise seed {st['seed']}" if "seed" in st else "")))
    lines = [f"mean returns over {st['episodes']} episodes of {st['steps']} steps "
             f"(world model: {REPLAYS[st.get('replay', 'open-loop')]}; equal control cost: "
             f"{'yes' if result['equal_control_cost'] else 'no'})", *([source] if source else []), head, "-" * len(head)]
    for p in result["policies"]:
        lines.append(f"{p['policy']:<22} {p['real_return']:>9.2f} {p['decoded_real_return']:>10.2f} "
                     + " ".join(f"{p['wm_return'][c]:>14.2f}" for c in caches))
    lines.append(f"{'Spearman vs real':<22} {'':>9} {fmt(result['spearman_decoded_real']):>10} "
                 + " ".join(f"{fmt(result['spearman'][c]):>14}" for c in caches))
    ci = lambda v: "n/a" if v is None else f"[{v[0]:.2f}, {v[1]:.2f}]"  # noqa: E731
    lines.append(f"{'  90 % CI over starts':<22} {'':>9} {'':>10} "
                 + " ".join(f"{ci(result['spearman_ci90'][c]):>14}" for c in caches))
    lines.append(f"{'Spearman (all eps)':<22} {'':>9} {'':>10} "
                 + " ".join(f"{fmt(result['spearman_all'][c]):>14}" for c in caches))
    if not result["equal_control_cost"]:
        lines.append(f"{'Spearman, ctrl removed':<22} {'':>9} {fmt(result['spearman_decoded_real_without_ctrl']):>10} "
                     + " ".join(f"{fmt(result['spearman_without_ctrl'][c]):>14}" for c in caches))
    ref = result["reference_cache"]
    lines.append(f"{'same ranking as ' + ref:<22} {'':>9} {'':>10} "
                 + " ".join(f"{_yes(result['same_ranking'][c], 'NO'):>14}" for c in caches))
    return "\n".join(lines + [f"caution: {c}" for c in caveats(result)])


def format_terms(result: dict) -> str:
    """The mean returns split into the reward's position terms (real, decoded off the real frames, and per cache off
    the predicted frames): which term a model or its reader gets wrong, and for which policy. "" for a result saved
    before the terms were kept."""
    names = result.get("term_names")
    if not names:
        return ""
    caches = list(result["spearman"])
    cols = ["real", "dec(real)"] + [f"wm/{c}" for c in caches]
    w = max(10, *(len(c) + 1 for c in cols))
    head = f"{'':<22} " + " | ".join(f"{n:^{w * len(cols)}}" for n in names)
    sub = f"{'policy':<22} " + " | ".join("".join(f"{c:>{w}}" for c in cols) for _ in names)
    lines = [f"the same returns split into the reward's position terms (summed over each episode; the control cost "
             f"is exact)", head, sub, "-" * len(sub)]
    for p in result["policies"]:
        t = p["terms"]
        lines.append(f"{p['policy']:<22} " + " | ".join(
            "".join(f"{v:>{w}.2f}" for v in [t["real"][k], t["decoded_real"][k]] + [t["wm"][c][k] for c in caches])
            for k in range(len(names))))
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The README's policy-evaluation table rows (plus the Spearman and same-ranking rows)."""
    caches = list(result["spearman"])
    rows = [f"| {p['policy']} | {p['real_return']:.2f} | {p['decoded_real_return']:.2f} | "
            + " | ".join(f"{p['wm_return'][c]:.2f}" for c in caches) + " |" for p in result["policies"]]
    rows.append(f"| Spearman vs. real | | {fmt(result['spearman_decoded_real'])} | "
                + " | ".join(fmt(result["spearman"][c]) for c in caches) + " |")
    if not result["equal_control_cost"]:
        rows.append(f"| Spearman, control cost removed | | {fmt(result['spearman_decoded_real_without_ctrl'])} | "
                    + " | ".join(fmt(result["spearman_without_ctrl"][c]) for c in caches) + " |")
    rows.append(f"| same ranking as {result['reference_cache']} | | | "
                + " | ".join(_yes(result["same_ranking"][c], "no") for c in caches) + " |")
    return "\n".join(rows)
