"""Action-conditioned Cosmos-Predict2.5 video2world model: DiT + action embedder + Wan VAE + flow-matching scheduler.

One prediction ("chunk"): the last observed frame (or five frames) is encoded as the clean conditioning latent
frame(s), `k` actions are embedded per latent frame by Cosmos' action embedder (`ActionEmbedder`, NVIDIA's
structure and key names) and added to the timestep embedding, the remaining latent frames are denoised by the one
loop in `sampler.denoise` (so any cache policy applies), and the window is decoded back to `k` new frames. With
the Wan VAE's 4x temporal compression a chunk is 1 + k frames = 1 + k/4 latent frames, as in Cosmos'
action-conditioned robot model (k = 12 there, 7-D actions).

Checkpoint folder (diffusers layout plus two files of ours)::

    model.json                     WorldModelSpec: frames, actions, resolution, steps (see below)
    transformer/                   CosmosTransformer3DModel.save_pretrained
    vae/                           AutoencoderKLWan.save_pretrained (latents_mean/std in its config)
    scheduler/                     the scheduler's save_pretrained: UniPCMultistepScheduler (2.5 and the bundled
                                   model) or RectifiedFlowAB2Scheduler (NVIDIA's Predict2 sampler)
    action_embedder.safetensors    ActionEmbedder weights (NVIDIA's key names without `net.`)
    prompt_embeds.safetensors      "prompt" and "negative": fixed text embeddings (no text encoder at run time)
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache.base import CachePolicy
from .dit import DiT
from .sampler import SampleOutput, denoise
from .vae_kernels import use_fast_kernels

SPEC_FILE = "model.json"
BUNDLED = Path(__file__).resolve().parent / "assets" / "pusher"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cpu_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An input (numpy array, list, or a tensor of any device or dtype, bf16 included) as a CPU tensor."""
    t = x.detach().to("cpu") if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files, is corrupt, or whose parts do not fit together."""


def load_scheduler(folder: Path):
    """The scheduler a checkpoint names (`_class_name`): diffusers' UniPC or NVIDIA's Predict2 sampler."""
    from diffusers import UniPCMultistepScheduler

    from .predict2_scheduler import RectifiedFlowAB2Scheduler

    classes = {c.__name__: c for c in (UniPCMultistepScheduler, RectifiedFlowAB2Scheduler)}
    name = json.loads((folder / "scheduler_config.json").read_text()).get("_class_name")
    if name not in classes:
        raise CheckpointError(f"{folder}: scheduler {name!r} is not one of {sorted(classes)}")
    return classes[name].from_pretrained(folder)


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """"bf16" / "fp16" / "fp32" (or a torch dtype) -> torch dtype of the weights."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def read_spec(path: str | Path | None = None) -> "WorldModelSpec":
    """A checkpoint folder's `WorldModelSpec` (default: the bundled model's), read without loading any weights, so
    that commands can check their arguments against it first; errors name the file at fault."""
    path = Path(path) if path is not None else BUNDLED
    if path.is_file():
        raise CheckpointError(f"{path}: a file, not a model folder (NVIDIA's Cosmos checkpoint? `worldcache convert` "
                              f"makes a folder of it: README, Using the official weights)")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    need = [SPEC_FILE, "transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json",
            "action_embedder.safetensors", "prompt_embeds.safetensors"]
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        inside = path / "model"  # a `worldcache train --out` folder: its model is in model/
        hint = f"; the model of a train run is in its model/ folder: {inside}" if (inside / SPEC_FILE).is_file() else ""
        raise CheckpointError(f"{path}: missing {missing}{hint}")
    try:
        raw = json.loads((path / SPEC_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / SPEC_FILE}: not valid JSON ({e})") from None
    unknown = set(raw) - {f.name for f in fields(WorldModelSpec)}
    if unknown:
        raise CheckpointError(f"{path / SPEC_FILE}: unknown keys {sorted(unknown)}")
    return WorldModelSpec(**raw)


def chunk_seeds(seed: int | list[int], c: int) -> int | list[int]:
    """Noise seed(s) of chunk `c` of a rollout seeded `seed` (one int, or one per sample): seed + c."""
    return [int(x) + c for x in seed] if isinstance(seed, (list, tuple)) else int(seed) + c


@dataclass
class WorldModelSpec:
    height: int = 80                  # defaults: the bundled model's (MuJoCo Pusher, end-effector deltas x20)
    width: int = 96
    chunk: int = 8                    # actions (and new frames) per prediction; multiple of the VAE's 4x time
    action_dim: int = 3
    action_low: list = field(default_factory=lambda: [-1.0] * 3)
    action_high: list = field(default_factory=lambda: [1.0] * 3)
    fps: float = 20.0
    num_steps: int = 35               # default denoising steps
    guidance_scale: float = 0.0       # v + g (v - v_neg), NVIDIA's, for any g; 0: no guidance (one call a step)
    cond_frame_timestep: float | None = 1e-4  # None: the noisy frames' timestep (the official 2.5 action model)
    cond_latent_frames: int = 1       # 1 (one pixel frame) or 2 (five pixel frames), as Cosmos video2world
    action_per_frame: bool = True     # actions grouped per latent frame (2.5); False: one per chunk (Predict2)
    cosmos_sigmas: bool = False       # NVIDIA's sigmas linspace(0.999, 0, N + 1)[:-1], shifted (else diffusers')
    quantise_timestep: bool = False   # the network sees floor(1000 sigma) / 1000, as NVIDIA's sampler
    fp32_time_embedding: bool = False  # timestep embedding in fp32 whatever the weights' dtype, as NVIDIA's
    truncate_pixels: bool = False     # decoded frames truncated to uint8, as NVIDIA's action inference scripts
                                      # (`(clamp((x + 1) / 2, 0, 1) * 255).to(uint8)`); else rounded
    temporal_compression: int = 4
    spatial_compression: int = 4     # the VAE's; the DiT's 2x2 patches then give 8x-downsampled tokens
    name: str = "worldcache-model"
    # the simulated scene its frames show: the `scene.SCENE_KEYS` of its data's generator record, which `worldcache
    # train` takes from the data, and the benchmark and the fidelity check simulate real episodes in
    # (`PusherRenderer.for_scene`). None: scene v1, the bundled model's
    scene: dict | None = None

    @property
    def latent_frames(self) -> int:
        return self.cond_latent_frames + self.chunk // self.temporal_compression

    @property
    def cond_frames(self) -> int:
        """Pixel frames the conditioning latent frames encode (Wan's causal VAE: 1 + 4 per further latent)."""
        return 1 + self.temporal_compression * (self.cond_latent_frames - 1)

    def check(self) -> None:
        if self.chunk < 1 or self.chunk % self.temporal_compression:
            raise CheckpointError(f"chunk={self.chunk} must be a positive multiple of {self.temporal_compression}")
        if any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            raise CheckpointError(f"action_low {self.action_low} must not exceed action_high {self.action_high}")
        if not self.fps > 0:
            raise CheckpointError(f"fps={self.fps} must be > 0")
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise CheckpointError(f"action bounds must have action_dim={self.action_dim} entries")
        if self.height % self.spatial_compression or self.width % self.spatial_compression:
            raise CheckpointError(f"{self.height}x{self.width} must be divisible by {self.spatial_compression}")
        if self.cond_latent_frames not in (1, 2):
            raise CheckpointError(f"cond_latent_frames={self.cond_latent_frames}: must be 1 or 2")


class ActionMLP(nn.Module):
    """One of the official action MLPs: fc1 -> GELU(tanh) -> fc2 (names as in NVIDIA's checkpoints)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ActionEmbedder(nn.Module):
    """Cosmos' action embedder: actions of a chunk -> additions to the timestep embedding, per latent frame.

    Two independent MLPs as in NVIDIA's action-conditioned checkpoints: `action_embedder_B_D` (added to the
    timestep sinusoid before `time_embed.norm`) and `action_embedder_B_3D` (added to `t_embedder`'s output, the
    adaLN-LoRA term). `per_frame=True` (Cosmos-Predict2.5): `in_dim / action_dim` consecutive actions per
    generated latent frame, and the conditioning latent frame(s) get exactly zero, put in after the MLPs.
    `per_frame=False` (Cosmos-Predict2): the whole flattened chunk gives one embedding for every latent frame.
    """

    def __init__(self, in_dim: int, hidden: int, dim: int, per_frame: bool = True):
        super().__init__()
        self.per_frame = per_frame
        self.action_embedder_B_D = ActionMLP(in_dim, hidden, dim)
        self.action_embedder_B_3D = ActionMLP(in_dim, hidden, 3 * dim)

    @classmethod
    def from_state_dict(cls, state: dict, per_frame: bool = True) -> "ActionEmbedder":
        """Widths are read from the weights (official 2B: in 28 or 84, hidden 8192, D 2048)."""
        hidden, in_dim = state["action_embedder_B_D.fc1.weight"].shape
        module = cls(in_dim, hidden, state["action_embedder_B_D.fc2.weight"].shape[0], per_frame)
        module.load_state_dict(state)
        return module

    def zero_init(self) -> "ActionEmbedder":
        """Output layers at zero: a fresh embedder starts as a no-op on a pretrained timestep path."""
        for mlp in (self.action_embedder_B_D, self.action_embedder_B_3D):
            nn.init.zeros_(mlp.fc2.weight)
            nn.init.zeros_(mlp.fc2.bias)
        return self

    def forward(self, actions: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k, A) actions -> (B, num_frames, 3D) and (B, num_frames, D) for `num_frames` latent frames."""
        b = actions.shape[0]
        x = actions.reshape(b, -1, self.action_embedder_B_D.fc1.in_features)
        a3d, ad = self.action_embedder_B_3D(x), self.action_embedder_B_D(x)
        if not self.per_frame:  # one embedding for the whole chunk, on every latent frame
            return a3d.expand(-1, num_frames, -1), ad.expand(-1, num_frames, -1)
        n_cond = num_frames - x.shape[1]
        if n_cond < 0:
            raise ValueError(f"{x.shape[1]} action groups for {num_frames} latent frames")
        return tuple(torch.cat([v.new_zeros(b, n_cond, v.shape[-1]), v], dim=1) for v in (a3d, ad))


class WorldModel(nn.Module):
    def __init__(self, transformer, vae, scheduler, action_embedder: ActionEmbedder, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: torch.Tensor, spec: WorldModelSpec):
        super().__init__()
        spec.check()
        self.spec, self.vae, self.scheduler = spec, vae, scheduler
        use_fast_kernels(vae)
        self.dit = DiT(transformer, action_embedder)
        self.register_buffer("prompt_embeds", prompt_embeds)
        self.register_buffer("negative_prompt_embeds", negative_prompt_embeds)
        cfg = vae.config
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1))
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1))
        if spec.fp32_time_embedding:  # NVIDIA computes the timestep embedding in fp32 (DiT.embed casts after it)
            transformer.time_embed.float()
        self.eval()

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: WorldModelSpec, *, hidden_heads: int = 4, head_dim: int = 64, num_layers: int = 6,
              vae_base_dim: int = 8, patch: int = 2, text_dim: int = 64, text_len: int = 8,
              seed: int = 0) -> "WorldModel":
        """A freshly initialised model of our small architecture (training starts here).

        The VAE compresses 4x in time and `spec.spatial_compression` (4 or 8, as Wan) in space; the DiT patchifies
        latents by `patch` x `patch` as Cosmos does (1, 2, 2). It seeds torch's global generator with `seed` (the
        weights' draws), as it always has: code that draws after it (tests that perturb a built model) relies on
        that."""
        from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

        from .sampler import default_scheduler

        spec.check()
        torch.manual_seed(seed)
        z = 16
        levels = {4: ([1, 2, 4], [True, True]), 8: ([1, 2, 4, 4], [False, True, True])}
        if spec.spatial_compression not in levels or spec.temporal_compression != 4:
            raise CheckpointError(f"build() makes VAEs with spatial compression 4 or 8 and temporal 4, got "
                                  f"{spec.spatial_compression} / {spec.temporal_compression}")
        dim_mult, down_t = levels[spec.spatial_compression]
        vae = AutoencoderKLWan(base_dim=vae_base_dim, z_dim=z, dim_mult=dim_mult, num_res_blocks=1,
                               attn_scales=[], temperal_downsample=down_t, latents_mean=[0.0] * z,
                               latents_std=[1.0] * z, scale_factor_spatial=spec.spatial_compression,
                               scale_factor_temporal=spec.temporal_compression)
        hidden = hidden_heads * head_dim
        h, w = spec.height // spec.spatial_compression, spec.width // spec.spatial_compression
        if h % patch or w % patch:
            raise CheckpointError(f"{spec.height}x{spec.width}: must be divisible by "
                                  f"{spec.spatial_compression * patch} (the VAE's {spec.spatial_compression}x, then "
                                  f"the DiT's {patch}x{patch} patches)")
        transformer = CosmosTransformer3DModel(
            in_channels=z + 1, out_channels=z, num_attention_heads=hidden_heads, attention_head_dim=head_dim,
            num_layers=num_layers, mlp_ratio=4.0, text_embed_dim=text_dim, adaln_lora_dim=min(64, hidden // 2),
            max_size=(spec.latent_frames, h, w), patch_size=(1, patch, patch), rope_scale=(1.0, 1.0, 1.0),
            extra_pos_embed_type=None)  # as the real 2.5 model: RoPE only
        k_in = spec.action_dim * (spec.temporal_compression if spec.action_per_frame else spec.chunk)
        embedder = ActionEmbedder(k_in, 4 * hidden, hidden, spec.action_per_frame).zero_init()  # Cosmos: 4A->4D->D
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randn(1, text_len, text_dim, generator=g)  # stands for the encoded task prompt
        return cls(transformer, vae, default_scheduler(), embedder, prompt, torch.zeros_like(prompt), spec)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the model's own files (transformer, VAE, scheduler, action embedder, prompts, model.json). A
        checkpoint folder's companions (start_frames.npy, the state decoder, training.json) are the env's and the
        trainer's: copy them along where the copy is to serve an env."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cast = (lambda sd: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}) if dtype else (
            lambda sd: sd)
        self.dit.transformer.save_pretrained(path / "transformer")
        self.vae.save_pretrained(path / "vae")
        if dtype:  # smaller bundled checkpoint: re-save the weights in `dtype`
            for sub, mod in (("transformer", self.dit.transformer), ("vae", self.vae)):
                save_file(cast({k: v.contiguous() for k, v in mod.state_dict().items()}),
                          str(path / sub / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        self.scheduler.save_pretrained(path / "scheduler")
        save_file(cast({k: v.contiguous() for k, v in self.dit.cond_embedder.state_dict().items()}),
                  str(path / "action_embedder.safetensors"))
        save_file({"prompt": self.prompt_embeds.contiguous(), "negative": self.negative_prompt_embeds.contiguous()},
                  str(path / "prompt_embeds.safetensors"))
        (path / SPEC_FILE).write_text(json.dumps(asdict(self.spec), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32,
                        fresh_action_embedder: bool = False, compile: bool = False) -> "WorldModel":
        """Load a checkpoint folder (default: the bundled Pusher model) with weights in `dtype` (bf16, fp16 or
        fp32). Errors name the file at fault. `fresh_action_embedder`: ignore the folder's action embedder and
        start a zero-initialised one of the official widths (training from a checkpoint of another structure).
        `compile`: torch.compile the DiT's blocks (`compile_dit()`)."""
        from diffusers import AutoencoderKLWan, CosmosTransformer3DModel
        from safetensors.torch import load_file

        dtype = parse_dtype(dtype)
        path = Path(path) if path is not None else BUNDLED
        spec = read_spec(path)
        if 0 < spec.guidance_scale <= 1:
            warnings.warn(f"{path / SPEC_FILE}: guidance_scale {spec.guidance_scale} now guides (NVIDIA's v + g (v - "
                          "v_neg) for any g != 0); before 2026-12-06 up to 1 meant none, as in diffusers. Set it to 0 "
                          "for none", stacklevel=2)

        def load(what, fn, file):
            try:
                return fn()
            except CheckpointError:
                raise
            except Exception as e:  # diffusers/safetensors raise many types for corrupt files
                raise CheckpointError(f"{path / file}: cannot load {what}: {e}") from None

        def load_weights(what, model_cls, sub):
            """diffusers only logs missing or unexpected weights (a missing one stays on the meta device)."""
            def fn():
                m, info = model_cls.from_pretrained(path / sub, torch_dtype=dtype, output_loading_info=True)
                bad = [f"{k.replace('_', ' ')} {v[:4]}{' ...' if len(v) > 4 else ''}"
                       for k in ("missing_keys", "unexpected_keys") if (v := info.get(k))]
                if bad:
                    raise CheckpointError(f"{path / sub}: weights do not fit its config.json: {'; '.join(bad)}")
                return m
            return load(what, fn, sub)

        transformer = load_weights("transformer", CosmosTransformer3DModel, "transformer")
        vae = load_weights("VAE", AutoencoderKLWan, "vae")
        scheduler = load("scheduler", lambda: load_scheduler(path / "scheduler"), "scheduler")
        hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        want_in = spec.action_dim * (spec.temporal_compression if spec.action_per_frame else spec.chunk)
        if fresh_action_embedder:
            state = ActionEmbedder(want_in, 4 * hidden, hidden, spec.action_per_frame).zero_init().state_dict()
        else:
            state = load("action embedder", lambda: load_file(str(path / "action_embedder.safetensors")),
                         "action_embedder.safetensors")
        try:
            embedder = ActionEmbedder.from_state_dict(state, spec.action_per_frame).to(dtype)
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path / 'action_embedder.safetensors'}: not an action embedder "
                                  f"(action_embedder_B_D / action_embedder_B_3D .fc1/.fc2): {e}") from None
        d = embedder.action_embedder_B_D
        if d.fc1.in_features != want_in or d.fc2.out_features != hidden:
            raise CheckpointError(f"{path / 'action_embedder.safetensors'}: maps {d.fc1.in_features} -> "
                                  f"{d.fc2.out_features}, the model needs {want_in} -> {hidden} (action_dim "
                                  f"{spec.action_dim}, action_per_frame={spec.action_per_frame}, chunk {spec.chunk})")
        prompts = load("prompt embeddings", lambda: load_file(str(path / "prompt_embeds.safetensors")),
                       "prompt_embeds.safetensors")
        cfg = transformer.config
        # With the cross-attention projection kept, the prompts are the text encoder's raw output (100352-d).
        text_dim = cfg.crossattn_proj_in_channels if cfg.use_crossattn_projection else cfg.text_embed_dim
        for key in ("prompt", "negative"):
            if key not in prompts or prompts[key].shape[-1] != text_dim:
                raise CheckpointError(f"{path / 'prompt_embeds.safetensors'}: '{key}' must have last dim "
                                      f"{text_dim} (the transformer's text input)")
        vae_scale = (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal)
        if vae_scale != (spec.spatial_compression, spec.temporal_compression):
            raise CheckpointError(f"{path / 'vae/config.json'}: VAE compresses space/time by {vae_scale}, but "
                                  f"{path / SPEC_FILE} says {(spec.spatial_compression, spec.temporal_compression)}")
        p, grid = transformer.config.patch_size, (spec.latent_frames, spec.height // spec.spatial_compression,
                                                   spec.width // spec.spatial_compression)
        if any(g % q or g > m for g, q, m in zip(grid, p, transformer.config.max_size)):  # max_size: latent units
            raise CheckpointError(f"{path / SPEC_FILE}: its latent grid {grid} (frames, h, w) must divide into the "
                                  f"transformer's patches {tuple(p)} and fit its max_size "
                                  f"{tuple(transformer.config.max_size)} (transformer/config.json)")
        if vae.config.z_dim + 1 != transformer.config.in_channels:
            raise CheckpointError(f"{path}: VAE z_dim {vae.config.z_dim} does not fit transformer in_channels "
                                  f"{transformer.config.in_channels} (= z_dim + 1 condition-mask channel)")
        model = cls(transformer, vae, scheduler, embedder, prompts["prompt"].to(dtype),
                    prompts["negative"].to(dtype), spec)
        return model.to(device).compile_dit() if compile else model.to(device)

    def compile_dit(self) -> "WorldModel":
        """torch.compile the DiT's blocks (`DiT.compile_blocks`): calls take ~28% less time on 2 CPU cores, after a
        first compile of ~20 s (needs a C++ compiler on CPU). Results equal the eager model's up to float rounding.
        Returns the model."""
        self.dit.compile_blocks()
        return self

    # --- pixels <-> latents -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype. Latents, noise, scheduler state and timesteps stay fp32 whatever it is."""
        return self.prompt_embeds.dtype

    def encode(self, frames) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised fp32 latents (B, 16, 1 + (T-1)/4, h, w)."""
        frames = _cpu_tensor(frames) if not isinstance(frames, torch.Tensor) else frames
        if frames.dtype != torch.uint8 or frames.ndim != 5:  # float frames in [0, 1] would read as near-black
            raise ValueError(f"frames must be uint8 (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        return self.encode_pixels(frames.to(self.device, self.vae.dtype).permute(0, 4, 1, 2, 3) / 127.5 - 1)

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """`encode` of pixels already in the VAE's layout, (B, 3, T, H, W) in [-1, 1]; differentiable in them."""
        z = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist.mode().float()
        return (z - self.latents_mean) / self.latents_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents -> uint8 frames (B, T, H, W, 3), rounded, or truncated (`spec.truncate_pixels`)."""
        x = self.vae.decode((latents.float() * self.latents_std + self.latents_mean).to(self.vae.dtype)).sample
        if self.spec.truncate_pixels:  # NVIDIA's: the next chunk is conditioned on these frames
            x = ((x.float() + 1) / 2).clamp(0, 1) * 255
        else:
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
        return x.to(torch.uint8).permute(0, 2, 3, 4, 1)

    # --- prediction -------------------------------------------------------------------------------------------
    def check_actions(self, actions) -> torch.Tensor:
        a = _cpu_tensor(actions, torch.float32)
        want = (self.spec.chunk, self.spec.action_dim)
        if a.ndim != 3 or tuple(a.shape[1:]) != want:
            raise ValueError(f"actions must have shape (batch, {want[0]}, {want[1]}), got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError("actions contain NaN or inf")
        return a.to(self.device, self.dtype)

    def cond_window(self, frame) -> torch.Tensor:
        """uint8 (B, H, W, 3) or (B, n, H, W, 3), oldest first -> the last `spec.cond_frames` frames
        (B, cond_frames, H, W, 3). Fewer frames than that (e.g. after a reset) are padded by repeating the oldest."""
        s = self.spec
        frame = _cpu_tensor(frame)
        if frame.ndim == 4:
            frame = frame[:, None]
        if frame.dtype != torch.uint8 or frame.ndim != 5 or tuple(frame.shape[2:]) != (s.height, s.width, 3):
            raise ValueError(f"frame must be uint8 (batch, {s.height}, {s.width}, 3) or (batch, n, {s.height}, "
                             f"{s.width}, 3), got {frame.dtype} {tuple(frame.shape)}")
        frame = frame[:, -s.cond_frames:]
        pad = s.cond_frames - frame.shape[1]
        return torch.cat([frame[:, :1].expand(-1, pad, -1, -1, -1), frame], dim=1) if pad else frame

    @torch.no_grad()
    def predict(self, frame, actions, *, policy: CachePolicy | None = None, num_steps: int | None = None,
                seed: int | list[int] | None = 0, timing: bool = False) -> tuple[torch.Tensor, SampleOutput]:
        """Predict `chunk` new frames from the last frame(s) and actions (B, chunk, A).

        `frame`: uint8 (B, H, W, 3), or (B, n, H, W, 3) oldest first, of which the last `spec.cond_frames`
        (1 or 5) condition the prediction. Returns uint8 frames (B, chunk, H, W, 3) and the loop's output (fp32
        latents and per-call cache records). `seed` fixes the initial noise (one seed per batch element or one
        for all): same inputs -> same frames. `timing`: record per-call wall times (see `sampler.denoise`).
        """
        s = self.spec
        frames = self.cond_window(frame)
        a = self.check_actions(actions)
        b = frames.shape[0]
        if a.shape[0] != b:
            raise ValueError(f"batch of frames ({b}) and actions ({a.shape[0]}) differ")
        cond = self.encode(frames)  # cond_latent_frames latent frames
        shape = (b, cond.shape[1], s.latent_frames, *cond.shape[-2:])
        noise = self._noise(shape, seed)
        cond_latents = torch.cat([cond, torch.zeros_like(noise[:, :, s.cond_latent_frames:])], dim=2)
        num_steps = s.num_steps if num_steps is None else num_steps  # 0 is refused by the loop, not defaulted
        sigmas = np.linspace(0.999, 0, num_steps + 1)[:-1] if s.cosmos_sigmas else None  # the scheduler shifts them
        out = denoise(self.dit, self.scheduler, noise, self.prompt_embeds.expand(b, -1, -1),
                      num_steps=num_steps, policy=policy, cond_latents=cond_latents,
                      num_cond_frames=s.cond_latent_frames,
                      negative_encoder_hidden_states=self.negative_prompt_embeds.expand(b, -1, -1),
                      guidance_scale=s.guidance_scale, frame_cond=a, cond_frame_timestep=s.cond_frame_timestep,
                      sigmas=sigmas, quantise_timestep=s.quantise_timestep, timing=timing)
        frames = self.decode(out.latents)[:, -s.chunk:]
        return frames, out

    @torch.no_grad()
    def rollout(self, frame, actions, *, policy: CachePolicy | None = None, num_steps: int | None = None,
                seed: int | list[int] = 0, timing: bool = False) -> tuple[torch.Tensor, list[SampleOutput]]:
        """Open-loop autoregressive prediction of (B, n*chunk) actions: each chunk starts from the last predicted
        frame(s). Returns uint8 frames (B, n*chunk, H, W, 3) and one SampleOutput per chunk. `seed`: one int for
        the batch or one per sample; chunk c draws seed + c (give samples seeds far apart, e.g.
        `seeding.derived_seed`, or their chunks share noise)."""
        a = _cpu_tensor(actions, torch.float32)
        k = self.spec.chunk
        seed = seed.tolist() if isinstance(seed, np.ndarray) else seed  # one per sample, as a list
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
        if not seeds or any(not isinstance(x, (int, np.integer)) or isinstance(x, bool) for x in seeds):
            raise ValueError(f"rollout seed must be an int or a list of ints (chunk c uses seed + c), got {seed!r}")
        if a.ndim != 3 or a.shape[1] % k or not a.shape[1]:
            raise ValueError(f"actions must be (batch, n*{k}, {self.spec.action_dim}), got {tuple(a.shape)}")
        frames, outs = [], []
        history = self.cond_window(frame)
        for c in range(a.shape[1] // k):
            if policy is not None:
                policy.begin_chunk(c)  # policies that carry state across chunks (cross_chunk) know a rollout's order
            new, out = self.predict(history, a[:, c * k:(c + 1) * k], policy=policy, num_steps=num_steps,
                                    seed=chunk_seeds(seed, c), timing=timing)
            frames.append(new)
            outs.append(out)
            history = torch.cat([history, new.cpu()], dim=1)[:, -self.spec.cond_frames:]
        return torch.cat(frames, dim=1), outs

    def _noise(self, shape, seed) -> torch.Tensor:
        seeds = seed if isinstance(seed, (list, tuple)) else [seed] * shape[0]
        if len(seeds) != shape[0]:
            raise ValueError(f"seed: {len(seeds)} seeds for a batch of {shape[0]} (one int, or one per sample)")
        gens = [torch.Generator().manual_seed(int(x)) if x is not None else None for x in seeds]
        noise = torch.stack([torch.randn(shape[1:], generator=g) for g in gens])
        return noise.to(self.device)  # fp32 whatever the weights' dtype, as diffusers' Cosmos 2.5 pipeline
