"""Every shipped config loads by name from the one CONFIG_DIR (which a wheel install ships as worldcache.configs)."""
import pytest
import yaml

from worldcache.cache import load_policy
from worldcache.cache.config import CACHE_CONFIG_DIR, CONFIG_DIR
from worldcache.rollouts.config import RolloutConfig

CACHE_NAMES = sorted(p.stem for p in CACHE_CONFIG_DIR.glob("*.yaml"))
ROLLOUT_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_config_dir_holds_the_shipped_files():
    assert CACHE_CONFIG_DIR == CONFIG_DIR / "cache"
    assert {"worldcache", "worldcache_paper", "dicache", "teacache", "none"} <= set(CACHE_NAMES)
    assert {"rollout", "rollout_smoke"} <= set(ROLLOUT_NAMES)


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_cache_config_loads_by_name(name):
    policy = load_policy(name)
    assert policy.name == ("worldcache" if name == "worldcache_paper" else name)


@pytest.mark.parametrize("name", ROLLOUT_NAMES)
def test_rollout_config_loads_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # by name, not by a path relative to the checkout
    cfg = RolloutConfig.load(name)
    assert cfg.cache in CACHE_NAMES
    # every key the file sets, as the file sets it (read here with plain YAML); the rest at RolloutConfig's defaults
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    got = cfg.as_kwargs()
    assert {k: got[k] for k in raw} == raw
    assert {k: v for k, v in got.items() if k not in raw} == \
        {k: v for k, v in RolloutConfig().as_kwargs().items() if k not in raw}


def test_a_rollout_config_name_with_its_suffix_or_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RolloutConfig.load("rollout_smoke.yaml") == RolloutConfig.load("rollout_smoke")  # the shipped file's name
    (tmp_path / "rollout_smoke.yaml").write_text("episodes: 7\n")  # a file of that name here is the user's own
    assert RolloutConfig.load("rollout_smoke.yaml").episodes == 7
    shipped = ", ".join(ROLLOUT_NAMES)
    assert RolloutConfig.load("rollout.yml") == RolloutConfig.load("rollout")
    for bad in ("nosuch", "nosuch.yaml", "elsewhere/rollout_smoke.yaml", "./rollout.yaml"):  # a path is not a name
        with pytest.raises(ValueError, match=rf"no rollout config '{bad}': not a file, nor a shipped config "
                                             rf"\({shipped}\)"):
            RolloutConfig.load(bad)
