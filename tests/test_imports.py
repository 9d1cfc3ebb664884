"""Every module imports on its own (its own fork of an interpreter that imported no worldcache module), and in any
order with diffusers in fresh interpreters (the OSMesa/triton crash)."""
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import worldcache

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib


def _run(code: str, **env) -> subprocess.CompletedProcess:
    # A fresh interpreter: what a user's script does, with nothing this test session already imported.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _modules() -> list[str]:
    # every module and package that pyproject.toml ships: envs/, rollouts/ and configs/ are mapped in from outside
    # worldcache/, so walking worldcache.__path__ alone would miss them
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    names = set(packages)
    for pkg in packages:
        names |= {m.name for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + ".")}
    return sorted(names)


# Each module is imported in its own fork of one interpreter that holds no worldcache module: a fresh interpreter per
# module (~15 s of torch + diffusers each, 55 modules) would take minutes on 2 cores. Only heavy third-party
# libraries are preloaded; whether a module's own imports resolve (a missing name, an order-dependent cycle between
# worldcache modules) does not depend on them. The third-party import-order crash (OSMesa vs triton) is checked in
# fresh interpreters below, so mujoco/gymnasium/OpenGL are not preloaded here (mujoco_data must set MUJOCO_GL first).
_FORK_EACH = """
import json, os, sys, traceback
import diffusers.hooks, diffusers.models.autoencoders.autoencoder_kl_wan, scipy.stats, torch, torchmetrics, zarr
from diffusers import CosmosTransformer3DModel  # noqa: F401  (diffusers loads its models lazily)
assert not [m for m in sys.modules if m.split(".")[0] in ("worldcache", "mujoco")], "preloaded too much"
failed, running, todo = {}, {}, list(%r)


def start(name):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc()[-1500:].encode())  # under a pipe's buffer: the child never blocks
            code = 1
        os._exit(code)
    os.close(w)
    running[pid] = name, r


while todo or running:
    while todo and len(running) < 2:  # two at a time: the machine's cores
        start(todo.pop())
    pid, status = os.wait()
    name, r = running.pop(pid)
    with os.fdopen(r) as f:
        err = f.read()
    if status != 0:
        failed[name] = err or "wait status %%d" %% status
print(json.dumps(failed))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one interpreter per module")
def test_every_module_imports():
    mods = _modules()
    assert {"worldcache.cli", "worldcache.mujoco_data", "worldcache.envs.cosmos_env", "worldcache.bench",
            "worldcache.bench.run", "worldcache.bench.tune", "worldcache.cache.worldcache",
            "worldcache.rollouts.driver", "worldcache.envs.vector_env"} <= set(mods)
    res = _run(_FORK_EACH % mods)
    assert res.returncode == 0, res.stderr[-2000:]
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"{m}:\n{e}" for m, e in failed.items())


@pytest.mark.parametrize("code", [
    "import worldcache.mujoco_data; import diffusers",
    "import diffusers; import worldcache.mujoco_data",
    "from worldcache.mujoco_data import real_rollout\nfrom worldcache.world_model import WorldModel",
])
def test_mujoco_and_diffusers_in_any_order(code):
    res = _run(code + "\nprint('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", f"rc={res.returncode}: {res.stderr[-2000:]}"


def test_mujoco_gl_osmesa_set_by_the_user():
    # MUJOCO_GL=osmesa exported (as setup_system.sh describes): MuJoCo imported after worldcache works; before it,
    # diffusers' triton segfaulted (rc -11), now a named error
    code = "import worldcache, mujoco\nfrom diffusers import CosmosTransformer3DModel\nprint('ok')"
    res = _run(code, MUJOCO_GL="osmesa")
    assert res.returncode == 0 and res.stdout.strip() == "ok", f"rc={res.returncode}: {res.stderr[-2000:]}"
    res = _run("import mujoco, worldcache", MUJOCO_GL="osmesa")
    assert res.returncode == 1 and "Import worldcache first" in res.stderr, f"rc={res.returncode}: {res.stderr[-2000:]}"


@pytest.mark.slow
def test_render_then_predict():
    code = """
import numpy as np
from worldcache.mujoco_data import PusherRenderer
from worldcache.world_model import WorldModel
with PusherRenderer() as r:
    r.reset(seed=0)
    frame = r.render()
model = WorldModel.from_pretrained()
s = model.spec
frames, _ = model.predict(frame[None], np.zeros((1, s.chunk, s.action_dim), np.float32), num_steps=2)
assert frames.shape == (1, s.chunk, s.height, s.width, 3), frames.shape
print('ok')
"""
    res = _run(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", f"rc={res.returncode}: {res.stderr[-2000:]}"
