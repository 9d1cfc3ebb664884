"""Every module imports on its own, in a fresh interpreter, in any order with diffusers (the OSMesa/triton crash)."""
import os
import pkgutil
import subprocess
import sys

import pytest

import worldcache


def _run(code: str, **env) -> subprocess.CompletedProcess:
    # A fresh interpreter: what a user's script does, with nothing this test session already imported.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _modules() -> list[str]:
    names = ["worldcache", "worldcache.cache", "worldcache.envs", "worldcache.rollouts"]
    for pkg in ("worldcache", "worldcache.cache", "worldcache.envs", "worldcache.rollouts"):
        mod = __import__(pkg, fromlist=["__path__"])
        names += [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(mod.__path__) if not m.ispkg]
    return sorted(set(names))


def test_every_module_imports():
    mods = _modules()
    assert {"worldcache.cli", "worldcache.mujoco_data", "worldcache.envs.cosmos_env"} <= set(mods)
    res = _run("import importlib\nfor m in %r:\n    importlib.import_module(m)\nprint('ok')" % mods)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


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
