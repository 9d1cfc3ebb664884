"""Gymnasium environments backed by the world model. Importing this registers them (no torch import here:
gymnasium entry points are strings, resolved on `gym.make`)."""
from __future__ import annotations

import gymnasium

ENV_ID = "WorldCache-Cosmos-v0"

if ENV_ID not in gymnasium.registry:  # re-imports (reloads, tests) must not warn about overriding
    gymnasium.register(
        id=ENV_ID,
        entry_point="worldcache.envs.cosmos_env:CosmosWorldEnv",
        vector_entry_point="worldcache.envs.vector_env:CosmosWorldVectorEnv",
        max_episode_steps=12,  # env steps of one chunk each: 12 * 8 = 96 predicted frames
    )

__all__ = ["ENV_ID"]
