"""`worldcache convert`: NVIDIA's action-conditioned Cosmos checkpoints -> a `WorldModel` folder.

Inputs are local files only (nothing is downloaded):

- the transformer, `*_ema_bf16.pt` (Cosmos-Predict2.5-2B action-conditioned) or `model-480p-4fps.pt`
  (Cosmos-Predict2-2B action-conditioned): a flat state dict with `net.` keys, possibly wrapped in
  `{"model": ...}` or `{"state_dict": ...}`;
- the Wan 2.1 VAE: a diffusers `AutoencoderKLWan` folder, or the original `Wan2.1_VAE.pth` / `tokenizer.pth`
  (mapped by diffusers' own `convert_wan_vae_to_diffusers`);
- the fixed text embeddings: a safetensors or torch file with `prompt` and `negative` tensors (2.5: required;
  2: optional, by default zeros [1, 512, 1024], as NVIDIA's Predict2 action pipeline feeds its network).

Each variant gets its own sampling, as NVIDIA samples it: 2.5 UniPC flow matching (shift 5, NVIDIA's sigmas, the
conditioning frame at the noisy frames' timestep, quantised timesteps); 2 NVIDIA's Predict2 sampler
(`predict2_scheduler.RectifiedFlowAB2Scheduler`: Karras sigmas 80 -> 0.002, 35 steps and a final clean pass, 36
calls), the conditioning frame at sigma 1e-4 (t = 1e-4 / 1.0001), unquantised timesteps.

Key accounting is strict: every source tensor lands at its diffusers key (diffusers' Cosmos 2.0 rename table,
which its converter also uses for 2.5), in the action embedder, or on `DROPPED` (buffers and training counters).
A missing, unexpected or misshapen key is a `CheckpointError` naming the key and the expected shape. The
expected keys and shapes come from `CosmosTransformer3DModel` built on the `meta` device with the config read
from the checkpoint's shapes, so the plan for a 2B checkpoint can be checked without its memory.

`crossattn_proj` (Linear 100352 -> 1024, then GELU; ~205 MB in bf16) is applied once to the two fixed prompts and
dropped: the written transformer then takes 1024-d text embeddings directly (exact up to rounding; done in fp32).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .world_model import SPEC_FILE, ActionEmbedder, CheckpointError, WorldModelSpec, parse_dtype

# diffusers' TRANSFORMER_KEYS_RENAME_DICT_COSMOS_2_0 (scripts/convert_cosmos_to_diffusers.py): ordered substring
# renames; the adaln_modulation_* entries must come before self_attn / cross_attn. Keys are renamed by diffusers'
# own converter (`diffusers_key`); this copy only names, in messages, the official key of a missing one (tested to
# invert diffusers' renames on every key of the model).
RENAMES = (
    ("t_embedder.1", "time_embed.t_embedder"),
    ("t_embedding_norm", "time_embed.norm"),
    ("blocks", "transformer_blocks"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"),
    ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
    ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"),
    ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"),
    ("cross_attn", "attn2"),
    ("q_proj", "to_q"),
    ("k_proj", "to_k"),
    ("v_proj", "to_v"),
    ("output_proj", "to_out.0"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"),
    ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
)
# Not weights: RoPE buffers (recomputed by diffusers), training counters, TransformerEngine state.
DROPPED = ("pos_embedder.seq", "pos_embedder.dim_spatial_range", "pos_embedder.dim_temporal_range",
           "accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration", "accum_train_in_hours")
EXTRA_STATE = "_extra_state"
ACTION_PREFIXES = ("action_embedder_B_D.", "action_embedder_B_3D.")
CROSSATTN_PROJ = ("crossattn_proj.0.weight", "crossattn_proj.0.bias")

# Cosmos-Predict2.5-2B as a diffusers config (= diffusers' "Cosmos-2.5-Predict-Base-2B"). Settings that are not
# in the weights (RoPE scale, max size, padding mask) are taken from here; the widths are read from the weights.
REAL_2B_CONFIG = dict(
    in_channels=17, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28, mlp_ratio=4.0,
    text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
    rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None, use_crossattn_projection=True,
    crossattn_proj_in_channels=100352, encoder_hidden_states_channels=1024)

# Real-model settings for model.json (REAL_MODEL.md §5). Action bounds: the official model has none; the default
# is our assumption (end-effector deltas x20 in [-1, 1], gripper state in [0, 1]); --action-low/--action-high.
DEFAULT_ACTION_LOW = [-1.0] * 6 + [0.0]
DEFAULT_ACTION_HIGH = [1.0] * 7
VARIANTS = ("auto", "2.5", "2")


def diffusers_key(key: str) -> str:
    """The diffusers name of an official (stripped) transformer key, by diffusers' single-file converter."""
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    # a key diffusers drops comes back as it is, so the plan calls it unexpected (those dropped on purpose, RoPE
    # buffers and counters, are set aside before)
    return next(iter(convert_cosmos_transformer_checkpoint_to_diffusers({f"net.{key}": None})), key)


def _need(state: dict, key: str, what: str, prefix: str = "net.") -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"missing key {prefix}{key} ({what})")
    return state[key]


def read_config(state: dict) -> dict:
    """The diffusers config of a (stripped) official state dict: widths from the shapes, the rest as the 2B."""
    d = _need(state, "t_embedding_norm.weight", "[D], the timestep RMSNorm").shape[0]
    head_dim = _need(state, "blocks.0.self_attn.q_norm.weight", "[head_dim]").shape[0]
    patch_in = _need(state, "x_embedder.proj.1.weight", "[D, (z + 2) * 4]").shape[1]
    out = _need(state, "final_layer.linear.weight", "[4 z, D]").shape[0]
    cfg = dict(REAL_2B_CONFIG)
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    if blocks != list(range(len(blocks))):
        gaps = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise CheckpointError(f"blocks {gaps} missing: the checkpoint has blocks {blocks[0]}..{blocks[-1]} with gaps")
    width_2b = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if d == width_2b and len(blocks) != cfg["num_layers"]:  # a truncated file would otherwise load as a shallower model
        raise CheckpointError(f"{len(blocks)} blocks at the 2B width {d}: the 2B model has {cfg['num_layers']}")
    p = cfg["patch_size"]
    patch = p[0] * p[1] * p[2]
    cfg.update(
        num_attention_heads=d // head_dim, attention_head_dim=head_dim,
        num_layers=len(blocks),
        in_channels=patch_in // patch - 1,  # minus the padding-mask channel the model concatenates
        out_channels=out // patch,
        mlp_ratio=_need(state, "blocks.0.mlp.layer1.weight", "[4 D, D]").shape[0] / d,
        adaln_lora_dim=_need(state, "blocks.0.adaln_modulation_self_attn.1.weight", "[R, D]").shape[0],
        text_embed_dim=_need(state, "blocks.0.cross_attn.k_proj.weight", "[D, C_text]").shape[1],
    )
    proj = state.get(CROSSATTN_PROJ[0])
    cfg["use_crossattn_projection"] = proj is not None
    if proj is not None:
        if proj.shape[0] != cfg["text_embed_dim"]:  # else a prompt-width error at load, far from its cause
            raise CheckpointError(f"{CROSSATTN_PROJ[0]}: projects the text to {proj.shape[0]} channels, but "
                                  f"blocks.0.cross_attn.k_proj takes {cfg['text_embed_dim']}")
        cfg.update(crossattn_proj_in_channels=proj.shape[1], encoder_hidden_states_channels=proj.shape[0])
    return cfg


def expected_shapes(config: dict) -> dict[str, tuple]:
    """diffusers key -> shape of `CosmosTransformer3DModel(**config)`, built on the meta device (no memory)."""
    from diffusers import CosmosTransformer3DModel

    with torch.device("meta"):
        model = CosmosTransformer3DModel(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass
class Plan:
    """Where every source tensor goes. Built from keys and shapes only (works on meta tensors)."""

    config: dict
    variant: str                               # "2.5" (per latent frame) or "2" (whole chunk)
    transformer: dict = field(default_factory=dict)   # official key -> diffusers key
    action: dict = field(default_factory=dict)        # official key -> ActionEmbedder key (the same name)
    dropped: list = field(default_factory=list)
    crossattn_proj: list = field(default_factory=list)


def make_plan(state: dict, variant: str = "auto", action_dim: int = 7, chunk: int = 12,
              temporal_compression: int = 4) -> Plan:
    """Check every key and shape of a stripped official state dict and say where each goes."""
    if variant not in VARIANTS:
        raise CheckpointError(f"variant must be one of {VARIANTS}, got {variant!r}")
    config = read_config(state)
    want = expected_shapes(config)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    if not any(k.startswith(ACTION_PREFIXES) for k in state):
        raise CheckpointError("no action_embedder_B_D / action_embedder_B_3D weights: not an action-conditioned "
                              "Cosmos checkpoint (a base Predict2.5 model cannot be driven by actions)")
    fc1 = _need(state, "action_embedder_B_D.fc1.weight", "[hidden, 4 A] or [hidden, chunk A]: the action MLP")
    hidden, in_dim = fc1.shape
    per_frame, whole = temporal_compression * action_dim, chunk * action_dim
    if variant == "auto":
        if per_frame == whole:
            raise CheckpointError(f"with chunk {chunk}, the per-latent-frame ({temporal_compression} x {action_dim}) "
                                  f"and the whole-chunk ({chunk} x {action_dim}) action widths are both {whole}: "
                                  f"pass --variant")
        if in_dim not in (per_frame, whole):
            raise CheckpointError(f"action_embedder_B_D.fc1 takes {in_dim} inputs: neither {per_frame} "
                                  f"(2.5: {temporal_compression} x {action_dim} per latent frame) nor {whole} "
                                  f"(2: {chunk} x {action_dim}); pass --variant, --action-dim or --chunk")
        variant = "2.5" if in_dim == per_frame else "2"
    widths = {"2.5": (per_frame, f"{temporal_compression} x {action_dim} per latent frame"),
              "2": (whole, f"{chunk} x {action_dim}, the whole chunk")}
    if in_dim != widths[variant][0] and per_frame != whole:
        other = next((f": the file's fits variant {v} ({text})" for v, (n, text) in widths.items() if n == in_dim),
                     "; --action-dim or --chunk?")
        raise CheckpointError(f"--variant {variant}: action_embedder_B_D.fc1 would take {widths[variant][0]} inputs "
                              f"({widths[variant][1]}), the file's takes {in_dim}{other}")
    if variant == "2" and any(k in state for k in CROSSATTN_PROJ):
        # NVIDIA's Predict2 nets have no crossattn_proj (their T5 text is 1024-d already): a whole-chunk action MLP
        # beside one is a 2.5-family net (ActionConditionedMinimalV1LVGDiT), whose text, sigmas and timesteps are
        # 2.5's; converting it with Predict2's conventions would run a different model
        raise CheckpointError(f"action_embedder_B_D.fc1 takes the whole chunk ({in_dim} = {chunk} x {action_dim}) "
                              "but the file has crossattn_proj, which Cosmos-Predict2 has not: a 2.5-family "
                              "whole-chunk action model, whose conventions this converter does not know")
    in_want = per_frame if variant == "2.5" else whole
    action_want = {}
    for name, out in (("action_embedder_B_D", d), ("action_embedder_B_3D", 3 * d)):
        action_want.update({f"{name}.fc1.weight": (hidden, in_want), f"{name}.fc1.bias": (hidden,),
                            f"{name}.fc2.weight": (out, hidden), f"{name}.fc2.bias": (out,)})
    plan = Plan(config=config, variant=variant)
    seen = set()
    for key, value in state.items():
        if key in DROPPED or key.endswith(EXTRA_STATE):
            plan.dropped.append(key)
            continue
        if key.startswith(ACTION_PREFIXES):
            target, shape = key, action_want.get(key)
            plan.action[key] = key
        else:
            target = diffusers_key(key)
            shape = want.get(target)
            if key in CROSSATTN_PROJ:
                plan.crossattn_proj.append(key)
            else:
                plan.transformer[key] = target
        if shape is None:
            raise CheckpointError(f"unexpected key net.{key} (no place for it in CosmosTransformer3DModel or the "
                                  f"action embedder; variant {variant})")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"net.{key}: expected shape {list(shape)}, got {got}")
        if not value.is_floating_point():  # converting would cast it silently into nonsense weights
            raise CheckpointError(f"net.{key}: expected floating-point weights, got {value.dtype}")
        seen.add(target)
    for target, shape in {**want, **action_want}.items():
        if target not in seen:
            where = "the action embedder" if target in action_want else f"diffusers {target}"
            raise CheckpointError(f"missing key net.{official_key(target)} ({where}, expected shape {list(shape)})")
    return plan


def official_key(target: str) -> str:
    """diffusers key -> official key (the renames backwards; for messages and tests)."""
    for old, new in reversed(RENAMES):
        target = target.replace(new, old)
    return target


# --- file reading ---------------------------------------------------------------------------------------------
def load_torch(path: str | Path, unsafe_pickle: bool = False) -> dict:
    """A torch checkpoint as a flat dict, unwrapped from {"model"/"state_dict": ...}. weights_only unless the user
    explicitly allows unpickling code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file (a distributed DCP checkpoint? NVIDIA's "
                              f"convert_distcp_to_pt.py makes one file of it)")
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    size = path.stat().st_size / 2**30
    print(f"loading {path} ({size:.2f} GiB, memory-mapped)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except (MemoryError, PermissionError):  # the machine's problem, not the file's (torch's zip reader raises
        raise                                # OSError EINVAL on a truncated file)
    except Exception as e:
        # weights_only refusing an object (TransformerEngine's _extra_state): torch's message is several lines of
        # advice (add_safe_globals, ANSI codes); the refused object is the news, and --unsafe-pickle the way
        found = re.search(r"WeightsUnpickler error: (Unsupported global: .+? allowed global.*?\.)(?:\s|$)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found and not unsafe_pickle:
            raise CheckpointError(f"{path}: holds objects other than tensors, which weights_only refuses "
                                  f"({found.group(1)}). If you trust the file, --unsafe-pickle loads it with "
                                  f"weights_only=False, which runs code stored in it.") from None
        # truncated, empty or not a torch file (weights_only's "Unsupported operand" on a safetensors file
        # included): unpickling would not help
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({path.stat().st_size} bytes; truncated or "
                              f"corrupt?): {type(e).__name__}: {_first_sentence(e)}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a state dict (got {type(obj).__name__})")
    return obj


def _first_sentence(e: BaseException) -> str:
    """An exception's gist on one line: weights_only's own finding where it gave one, else its first sentence."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    text = m.group(1) if (m := re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)) else text
    return text.split(". ")[0].splitlines()[0] if text else "no message"


def strip_net(state: dict) -> dict:
    """The network's weights without NVIDIA's ``net.`` prefix. A training checkpoint that also holds ``net_ema.``
    (NVIDIA's convert_distcp_to_pt.py) is refused: which of the two is meant is the user's to say."""
    if any(k.startswith("net_ema.") for k in state) and any(k.startswith("net.") for k in state):
        raise CheckpointError("the file holds both net.* and net_ema.* weights (a training checkpoint): give the "
                              "exported *_ema_bf16.pt, or a file with one of the two")
    prefix = "net_ema." if any(k.startswith("net_ema.") for k in state) else "net."
    if not any(k.startswith(prefix) for k in state):  # a wrapper's keys flattened (e.g. "model.net.blocks...")
        roots = r"(blocks|x_embedder|t_embedder|t_embedding_norm|final_layer|action_embedder|crossattn_proj)\."
        outer = next((m.group(1) for k in state if (m := re.match(rf"(.+?\.)net(_ema)?\.{roots}", k))), None)
        if outer is not None:
            raise CheckpointError(f"keys start with {outer!r} before NVIDIA's 'net.' (e.g. "
                                  f"{next(k for k in state if k.startswith(outer))}): save the state dict without "
                                  f"that prefix")
    return {k.removeprefix(prefix): v for k, v in state.items()}


def load_prompts(path: str | Path, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            prompts = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: cannot load prompt embeddings: {e}") from None
    else:
        prompts = load_torch(path, unsafe_pickle)
    for key in ("prompt", "negative"):
        v = prompts.get(key)
        if not isinstance(v, torch.Tensor) or v.ndim not in (2, 3):
            raise CheckpointError(f"{path}: needs tensors 'prompt' and 'negative' of shape [1, L, C] or [L, C]")
    return {k: (prompts[k] if prompts[k].ndim == 3 else prompts[k][None]) for k in ("prompt", "negative")}


def load_vae(path: str | Path, unsafe_pickle: bool = False):
    """A diffusers `AutoencoderKLWan` folder, or the original Wan 2.1 VAE file mapped to diffusers keys."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = Path(path)
    if path.is_dir():
        try:
            return AutoencoderKLWan.from_pretrained(path, torch_dtype=torch.float32)
        except Exception as e:
            raise CheckpointError(f"{path}: not a diffusers AutoencoderKLWan folder: {e}") from None
    state = convert_wan_vae_to_diffusers(load_torch(path, unsafe_pickle))
    if not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{path}: not a Wan 2.1 VAE (no encoder weights; the transformer's file given as the "
                              f"VAE?)")
    base = _need(state, "encoder.conv_in.weight", "[base_dim, 3, 3, 3, 3]", f"{path}: VAE ").shape[0]
    z = _need(state, "quant_conv.weight", "[2 z, 2 z, 1, 1, 1]", f"{path}: VAE ").shape[0] // 2
    with torch.device("meta"):
        vae = AutoencoderKLWan(base_dim=base, z_dim=z)  # Wan 2.1's structure and latent statistics
    want = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    for key, value in state.items():
        if key not in want:
            raise CheckpointError(f"{path}: unexpected VAE key {key}")
        if tuple(value.shape) != want[key]:
            raise CheckpointError(f"{path}: VAE key {key}: expected shape {list(want[key])}, got {list(value.shape)}")
    missing = set(want) - set(state)
    if missing:
        k = sorted(missing)[0]
        raise CheckpointError(f"{path}: missing VAE key {k} (expected shape {list(want[k])}; {len(missing)} missing)")
    vae.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return vae


# --- conversion -----------------------------------------------------------------------------------------------
def write_safetensors_sharded(tensors: dict, folder: Path, name: str = "diffusion_pytorch_model",
                              shard_bytes: int = 2 * 2**30) -> None:
    """diffusers' sharded layout (index json + shards), written with a progress bar."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    shards.append(cur)
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    if len(shards) == 1:
        save_file(shards[0], str(folder / f"{name}.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"write {folder.name}", dynamic_ncols=True) as bar:
        for i, shard in enumerate(shards):
            file = f"{name}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            bar.update(sum(v.numel() * v.element_size() for v in shard.values()))
    (folder / f"{name}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


@dataclass
class ConvertSummary:
    variant: str
    out: str
    transformer_tensors: int
    transformer_params: int
    action_tensors: int
    action_widths: tuple
    dropped: list
    prompts: str
    vae: str
    spec: dict
    sampling: str = ""

    def text(self) -> str:
        return "\n".join([
            f"converted Cosmos action-conditioned model (variant {self.variant}) -> {self.out}",
            f"  transformer: {self.transformer_tensors} tensors, {self.transformer_params / 1e6:.1f} M parameters",
            f"  action embedder: {self.action_tensors} tensors, widths in/hidden/D = {self.action_widths}",
            f"  dropped ({len(self.dropped)}): {', '.join(sorted({_kind(k) for k in self.dropped}))}",
            f"  prompts: {self.prompts}",
            f"  sampling: {self.sampling}",
            f"  VAE: {self.vae}",
            f"  model.json: {self.spec['height']}x{self.spec['width']}, chunk {self.spec['chunk']}, "
            f"{self.spec['action_dim']}-D actions in [{self.spec['action_low']}, {self.spec['action_high']}]",
        ])


def _kind(key: str) -> str:
    return "*._extra_state" if key.endswith(EXTRA_STATE) else key


# NVIDIA's Predict2 video2world (and so its action model): the conditioning frame at sigma 1e-4, seen as t = s / (s + 1)
PREDICT2_COND_T = 1e-4 / (1 + 1e-4)
PREDICT2_TEXT_TOKENS = 512  # its action pipeline's zero T5 embeddings: [B, 512, 1024]


def convert(transformer: str | Path, vae: str | Path, prompt_embeds: str | Path | None, out: str | Path, *,
            variant: str = "auto", unsafe_pickle: bool = False, action_low: list | None = None,
            action_high: list | None = None, dtype: torch.dtype | str = torch.bfloat16, action_dim: int = 7,
            chunk: int = 12, height: int | None = None, width: int | None = None) -> ConvertSummary:
    """Convert the official files into a folder that `WorldModel.from_pretrained` and the env load."""
    from diffusers import CosmosTransformer3DModel
    from safetensors.torch import save_file

    from .predict2_scheduler import RectifiedFlowAB2Scheduler
    from .sampler import default_scheduler

    dtype = parse_dtype(dtype)
    for flag, given, default in (("--action-low", action_low, DEFAULT_ACTION_LOW),
                                 ("--action-high", action_high, DEFAULT_ACTION_HIGH)):
        if len(given or default) != action_dim:  # before gigabytes are read
            what = "given" if given else "the default, Bridge's"
            raise CheckpointError(f"{flag}: {len(given or default)} values ({what}) for --action-dim {action_dim}: "
                                  f"give {action_dim}")
    for flag, size in (("--height", height), ("--width", width)):  # the Wan VAE's 8x, then the DiT's 2x2 patches
        if size is not None and size % 16:
            raise CheckpointError(f"{flag} {size}: must be a multiple of 16 (the Wan VAE's 8x, then the DiT's 2x2 "
                                  f"patches)")
    out = Path(out).absolute()  # `.` has no name to write beside
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):  # before gigabytes are read
        raise CheckpointError(f"{out}: {'is not empty' if out.is_dir() else 'is a file'}: convert writes a whole "
                              f"model folder, and another model's files beside it would mix into it; give a new "
                              f"--out (or remove this one)")
    state = strip_net(load_torch(transformer, unsafe_pickle))
    try:
        plan = make_plan(state, variant, action_dim=action_dim, chunk=chunk)
    except CheckpointError as e:  # the plan sees only the tensors: the error names the file they came from
        raise CheckpointError(f"{transformer}: {e}") from None
    if prompt_embeds is None and plan.variant == "2.5":
        raise CheckpointError("variant 2.5 needs --prompt-embeds: Cosmos-Reason1-7B's embeddings of the empty prompt "
                              "and of the default negative prompt, each [1, 512, 100352]")
    prompts = load_prompts(prompt_embeds, unsafe_pickle) if prompt_embeds is not None else None
    vae_model = load_vae(vae, unsafe_pickle)
    cfg = plan.config
    if vae_model.config.z_dim + 1 != cfg["in_channels"]:
        raise CheckpointError(f"{vae}: VAE z_dim {vae_model.config.z_dim} does not fit the transformer's "
                              f"{cfg['in_channels']} input channels (z_dim + 1 condition mask)")

    if prompts is None:  # variant 2: NVIDIA feeds zeros straight to the cross-attention (T5 width, no projection)
        zeros = torch.zeros(1, PREDICT2_TEXT_TOKENS, cfg["text_embed_dim"])
        prompts = {"prompt": zeros, "negative": zeros.clone()}
        cfg = dict(cfg, use_crossattn_projection=False)
    text_in = cfg["crossattn_proj_in_channels"] if cfg["use_crossattn_projection"] else cfg["text_embed_dim"]
    for k, v in prompts.items():
        if v.shape[-1] != text_in:
            raise CheckpointError(f"{prompt_embeds}: '{k}' has {v.shape[-1]} channels, the transformer's text input "
                                  f"takes {text_in}")
    if cfg["use_crossattn_projection"]:  # apply once to the fixed prompts and drop the projection (exact, -205 MB in bf16)
        w, b = (state[k].float() for k in CROSSATTN_PROJ)
        # crossattn_proj is Linear -> GELU (NVIDIA's and diffusers' nn.Sequential)
        prompts = {k: torch.nn.functional.gelu(torch.nn.functional.linear(v.float(), w, b)) for k, v in prompts.items()}
        prompt_note = f"crossattn_proj applied once ({text_in} -> {w.shape[0]}) and dropped from the transformer"
        cfg = dict(cfg, use_crossattn_projection=False)
    elif prompt_embeds is None:
        prompt_note = f"zeros [1, {PREDICT2_TEXT_TOKENS}, {text_in}] (NVIDIA's Predict2 action pipeline)"
    else:
        prompt_note = f"{text_in}-d, stored as given"

    fc1 = state["action_embedder_B_D.fc1.weight"]
    default_hw = (256, 320) if plan.variant == "2.5" else (480, 640)
    spec = WorldModelSpec(
        height=height or default_hw[0], width=width or default_hw[1], chunk=chunk, action_dim=action_dim,
        action_low=list(action_low or DEFAULT_ACTION_LOW), action_high=list(action_high or DEFAULT_ACTION_HIGH),
        fps=4.0, guidance_scale=0.0, cond_latent_frames=1, action_per_frame=plan.variant == "2.5",
        **(dict(num_steps=35, cosmos_sigmas=True, cond_frame_timestep=None, quantise_timestep=True)
           if plan.variant == "2.5" else  # 35 AB2 steps + the clean pass
           dict(num_steps=36, cosmos_sigmas=False, cond_frame_timestep=PREDICT2_COND_T, quantise_timestep=False)),
        # 2.5 embeds the timestep in fp32; Predict2 casts it to the weights' dtype first (and diffusers' Cosmos 2
        # pipeline too)
        fp32_time_embedding=plan.variant == "2.5", truncate_pixels=True,  # both variants' scripts truncate
        temporal_compression=vae_model.config.scale_factor_temporal,
        spatial_compression=vae_model.config.scale_factor_spatial, name=f"cosmos-action-{plan.variant}")
    spec.check()
    tensors = {}
    for key, target in tqdm(plan.transformer.items(), desc="map transformer", unit="tensor", dynamic_ncols=True):
        tensors[target] = state[key].to(dtype).contiguous()
    action = {k: state[k].to(dtype).contiguous() for k in plan.action}
    for key, value in {**tensors, **action}.items():  # checked before anything is written
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{key}: NaN or inf in the weights (after the cast to {dtype})")
    # written into a hidden folder inside `out` (its file system, its permissions; `out` may be a mount point) and
    # moved up at the end, model.json last: a stopped or failed run leaves `out` as it was, empty or absent
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".partial-{os.getpid()}"
    partial.mkdir()
    try:
        with torch.device("meta"):
            CosmosTransformer3DModel(**cfg).save_config(partial / "transformer")
        write_safetensors_sharded(tensors, partial / "transformer")
        save_file(action, str(partial / "action_embedder.safetensors"))
        save_file({k: v.contiguous() for k, v in prompts.items()}, str(partial / "prompt_embeds.safetensors"))
        vae_model.save_pretrained(partial / "vae")
        # NVIDIA's samplers: 2.5 UniPC on flow sigmas, shift 5; Predict2 its RectifiedFlowAB2
        scheduler = default_scheduler() if plan.variant == "2.5" else RectifiedFlowAB2Scheduler()
        scheduler.save_pretrained(partial / "scheduler")
        (partial / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
        for item in sorted(partial.iterdir(), key=lambda p: p.name == SPEC_FILE):
            os.replace(item, out / item.name)
        partial.rmdir()
    except BaseException:  # Ctrl-C included; `out` was empty before
        for item in out.iterdir():
            shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        if made:
            out.rmdir()
        raise
    return ConvertSummary(
        variant=plan.variant, out=str(out), transformer_tensors=len(tensors),
        transformer_params=sum(v.numel() for v in tensors.values()), action_tensors=len(action),
        action_widths=(fc1.shape[1], fc1.shape[0], state["action_embedder_B_D.fc2.weight"].shape[0]),
        dropped=plan.dropped + plan.crossattn_proj, prompts=prompt_note,
        sampling=("NVIDIA's 2.5: UniPC flow matching, shift 5, sigmas linspace(0.999, 0), the conditioning frame at "
                  "the noisy frames' timestep, quantised" if plan.variant == "2.5" else
                  "NVIDIA's Predict2: RectifiedFlowAB2, Karras sigmas 80 -> 0.002 (rho 7), 35 steps + a clean pass "
                  "(num_steps 36), the conditioning frame at sigma 1e-4, unquantised"),
        vae=f"{'diffusers folder' if Path(vae).is_dir() else 'original Wan layout, mapped'} {vae}",
        spec=asdict(spec))
