"""What a simulated Pusher scene is, without MuJoCo: the camera, the IK controller's gains and the supersampling
that `mujoco_data` simulates and renders episodes with, and the scenes `make-data --scene` offers. A model records
its data's scene (`WorldModelSpec.scene`); `check_scene` refuses a store of another scene where MuJoCo may be
absent (`bench --data` on the GPU machine)."""
from __future__ import annotations

# Fixed camera, 70 deg down from beyond the object area: the object spawn area, the goal and the arm from its base
# to the wrist stay in view in every frame, so the frame holds the arm's pose. The fork at the arm's end is not
# always whole: at reset 39 of its 307 pixels lie below the bottom edge (thirty-fourth session's audit, by
# segmentation rendering; the bundled model's data has it so; scene v2 below cuts none). At 80x96 the object is
# ~5 px and the goal ~8 px wide (at 64x80 they shrink to ~4 and ~6 px).
CAMERA = {"trackbodyid": -1, "distance": 1.9, "elevation": -70.0, "azimuth": 180.0,
          "lookat": [0.2, -0.2, -0.3]}
# The scenes `make-data --scene` renders: a camera, and whether `explore`'s constant-direction segments are "free"
# or "bounded" (stopped at `ExplorePolicy.box`'s faces). "v1" made the bundled model's data. "v2", the next data
# version: the camera farther back and explore bounded, so that no arm, object or goal pixel leaves the frame in
# 30 `mixed` or 30 `explore` episodes (`PusherRenderer.out_of_view`; free, explore cut 58 of their 1470 frames;
# README, "The bundled model").
SCENES = {"v1": {"camera": CAMERA, "explore": "free"},
          "v2": {"camera": {**CAMERA, "distance": 2.25, "lookat": [0.3, -0.25, -0.3]}, "explore": "bounded"}}
SUPERSAMPLE = 2  # render 2x and area-downsample: anti-aliasing far cheaper than MSAA in software GL
# the IK controller's gains (`mujoco_data.PusherRenderer`): kp 1/s toward the target, kv torque per rad/s
CONTROLLER = {"kp": 60.0, "kv": 8.0, "k_rest": 1.0, "damping": 0.05}
SCENE_KEYS = ("camera", "controller", "supersample")  # of `mujoco_data.generate`'s record: what a model's scene holds


def scene_record(generator: dict) -> dict:
    """The scene part of a make-data store's generator record: what a model, or a state decoder, trained on it
    records as the view it learned."""
    return {k: generator[k] for k in SCENE_KEYS if k in generator}


def camera_record(camera: dict | None) -> dict:
    """Camera config as plain JSON-able values (stored in attrs, compared on resume)."""
    cam = dict(CAMERA if camera is None else camera)
    cam["lookat"] = [float(v) for v in cam.get("lookat", CAMERA["lookat"])]
    return cam


def scene_of(record: dict | None) -> dict:
    """A scene in full: the camera, controller and supersampling of a model's `WorldModelSpec.scene` or of a store's
    generator record, what it leaves out filled in as v1's (None: v1), so that two compare."""
    r = record or {}
    return {"camera": camera_record(r.get("camera")), "controller": dict(r.get("controller", CONTROLLER)),
            "supersample": int(r.get("supersample", SUPERSAMPLE))}


def scene_name(generator: dict) -> str | None:
    """The name in `SCENES` of the scene a make-data store's generator record shows (its camera, controller and
    supersampling, and explore's bounds), None for one of its own (a `camera=` given to `generate`)."""
    explore = generator.get("explore", "free")  # a store written before explore was recorded had it free
    return next((n for n, sc in SCENES.items()
                 if not scene_diff({"camera": sc["camera"]}, generator) and sc["explore"] == explore), None)


def scene_diff(a: dict | None, b: dict | None) -> dict:
    """Where two scene records (a model's, a store's generator record, a state decoder's) differ, in full (None: v1):
    ``{key: (a's, b's)}``, empty where they show the same scene."""
    a, b = scene_of(a), scene_of(b)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def check_scene(model_scene: dict | None, attrs: dict, path) -> None:
    """Refuse a make-data store (its attrs' ``generator`` record) whose scene is not the model's: its frames would
    be scored against a view the model never saw. Stores without one (rollouts: the model's own frames) pass."""
    if "generator" not in attrs:
        return
    if diff := scene_diff(attrs["generator"], model_scene):
        raise ValueError(f"{path} shows another scene than the model's (the store's, the model's): {diff}; give a "
                         f"store of the model's scene (worldcache make-data --scene)")
