"""The Cosmos DiT split into embed -> block stack -> head, so a cache policy can skip the block stack.

`CosmosTransformer3DModel.forward` (diffusers) is one monolithic function; caching needs the stack input and
the ability to run blocks ``[start, end)`` on their own. `DiT` calls diffusers' own submodules in the same order as
that forward (tests check equality to 1e-6), plus one addition: Cosmos' action embedding, added to the timestep
sinusoid before `time_embed.norm` and to the adaLN-LoRA term `temb`, as NVIDIA's action-conditioned models do.
With per-frame timesteps the adaLN modulation is computed per latent frame, as NVIDIA's DiT does, not per token
(`FrameModulation`): the same numbers.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock
from torchvision import transforms


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def register_cosmos_block() -> None:
    """diffusers' cache hooks find blocks through `TransformerBlockRegistry`, which lacks Cosmos' block."""
    try:
        TransformerBlockRegistry.get(CosmosTransformerBlock)
    except ValueError:
        TransformerBlockRegistry.register(
            CosmosTransformerBlock,
            TransformerBlockMetadata(return_hidden_states_index=None, return_encoder_hidden_states_index=None),
        )


class FrameModulation(ModelHook):
    """Cosmos' adaLN modulation computed once per latent frame, then broadcast over the frame's tokens.

    diffusers' forward expands per-frame timestep embeddings to every token before the blocks, so the LoRA linears
    of the three adaLN norms of every block (and of the head's) run on T·H·W rows of which only T differ; NVIDIA's
    own DiT modulates per frame. Given per-frame embeddings (B, T, C), this hook hands the norm the tokens grouped by
    frame, (B, T, H·W, D), so diffusers' own norm broadcasts; outputs come back as (B, T·H·W, D). Per-token or
    per-sample embeddings (diffusers' own forward) pass through untouched."""

    def pre_forward(self, module, hidden_states, embedded_timestep, temb=None):
        b, n, d = hidden_states.shape
        if embedded_timestep.ndim != 3 or embedded_timestep.shape[1] == n:
            return (hidden_states, embedded_timestep, temb), {}
        t = embedded_timestep.shape[1]
        return (hidden_states.view(b, t, n // t, d), embedded_timestep.unsqueeze(2),
                None if temb is None else temb.unsqueeze(2)), {}

    def post_forward(self, module, output):
        h, gate = output if isinstance(output, tuple) else (output, None)
        if h.ndim != 4:
            return output
        if gate is None:  # the head's CosmosAdaLayerNorm
            return h.flatten(1, 2)
        return h.flatten(1, 2), gate.expand(-1, -1, h.shape[2], -1).flatten(1, 2)


def modulate_per_frame(transformer: CosmosTransformer3DModel) -> None:
    """Registers `FrameModulation` on every adaLN norm of `transformer` (once; state-dict keys are unchanged)."""
    norms = [getattr(b, n) for b in transformer.transformer_blocks for n in ("norm1", "norm2", "norm3")]
    for norm in norms + [transformer.norm_out]:
        registry = HookRegistry.check_if_exists_or_initialize(norm)
        if registry.get_hook("frame_modulation") is None:
            registry.register_hook(FrameModulation(), "frame_modulation")


@dataclass
class StackContext:
    """Everything the blocks need besides the hidden states; fixed for one model call."""

    encoder_hidden_states: torch.Tensor
    embedded_timestep: torch.Tensor  # (B, D), or (B, T, D) per token frame (`FrameModulation` broadcasts it)
    temb: torch.Tensor  # (B, 3D), or (B, T, 3D)
    image_rotary_emb: torch.Tensor
    extra_pos_emb: torch.Tensor | None
    attention_mask: torch.Tensor | None
    grid: tuple[int, int, int]  # tokens along (T, H, W) after patchify
    frame_is_cond: torch.Tensor | None = None  # (T,) 1 where a token frame is conditioning (shared by the batch)
    latents: torch.Tensor | None = None  # (B, C, T, H, W): the call's input latents, before the masks join them

    @functools.cached_property
    def cond_frames(self) -> int:
        """Token frames that are conditioning: the sampler discards the model's output there. Read on first use
        only (on a GPU it synchronises)."""
        return 0 if self.frame_is_cond is None else int(self.frame_is_cond.sum())

    def select(self, rows: torch.Tensor, batch: int) -> "StackContext":
        """The context of the samples `rows` of a batch of `batch`: per-sample tensors (batch first) are sliced,
        shared ones (rotary embedding, or anything broadcast with batch 1) are kept."""
        def pick(v):
            if isinstance(v, tuple):
                return tuple(pick(t) for t in v)
            return v[rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch else v

        return StackContext(pick(self.encoder_hidden_states), pick(self.embedded_timestep), pick(self.temb),
                            self.image_rotary_emb, pick(self.extra_pos_emb), pick(self.attention_mask), self.grid,
                            self.frame_is_cond, pick(self.latents))


class BlockStack:
    """Runs blocks of the stack for one model call. `x` is the stack input; policies call `self(h, start, end)`,
    or ``self.subset(rows)(h[rows], start)`` to run only the samples `rows` of the batch. `compiled`: run the
    DiT's compiled blocks (`DiT.compile_blocks`) instead of the modules."""

    def __init__(self, dit: "DiT", x: torch.Tensor, ctx: StackContext, root: "BlockStack | None" = None,
                 rows: list[int] | None = None, timing: bool = False, compiled: bool = False):
        self.dit, self.x, self.ctx = dit, x, ctx
        self.root = root or self  # a subset counts its work in the whole call's stack
        self.timing = self.root.timing if root is not None else timing
        self.blocks = (self.root.blocks if root is not None else
                       dit.compiled_blocks if compiled and dit.compiled_blocks else dit.transformer.transformer_blocks)
        self.rows = list(range(len(x))) if rows is None else rows  # its samples, as rows of the whole batch
        if root is None:
            self.sample_blocks = [0] * len(x)  # block forwards per sample in this call: what a skipped call saves
            # with timing: wall time inside block forwards (the rest of run_stack is the policy's own work)
            self.block_ms = 0.0 if timing else float("nan")

    @property
    def num_blocks(self) -> int:
        return len(self.dit.transformer.transformer_blocks)

    @property
    def blocks_run(self) -> int:
        """Block forwards run for the sample that ran most (the whole batch: all samples)."""
        return max(self.root.sample_blocks)

    @blocks_run.setter
    def blocks_run(self, n: int) -> None:  # hook policies count the blocks that really ran, for every sample
        self.root.sample_blocks = [int(n)] * len(self.root.sample_blocks)

    def subset(self, rows: list[int]) -> "BlockStack":
        """The stack of the samples `rows` of this batch (its input, its per-sample context)."""
        rows = list(rows)
        if rows == list(range(len(self.x))):
            return self
        idx = torch.tensor(rows, device=self.x.device)
        return BlockStack(self.dit, self.x[idx], self.ctx.select(idx, len(self.x)), self.root,
                          [self.rows[i] for i in rows])

    def __call__(self, h: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        c = self.ctx
        if self.timing:  # a GPU sync per timed span: only when timings are asked for, never in production rollouts
            sync(h.device)
            t0 = time.perf_counter()
        for block in self.blocks[start:end]:
            h = block(h, c.encoder_hidden_states, c.embedded_timestep, c.temb, c.image_rotary_emb,
                      c.extra_pos_emb, c.attention_mask, None)
            for r in self.rows:
                self.root.sample_blocks[r] += 1
        if self.timing:
            sync(h.device)
            self.root.block_ms += (time.perf_counter() - t0) * 1e3
        return h

    def modulated_input(self) -> torch.Tensor:
        """First block's adaLN-modulated input (what TeaCache-style policies watch)."""
        block = self.dit.transformer.transformer_blocks[0]
        h = self.x + self.ctx.extra_pos_emb if self.ctx.extra_pos_emb is not None else self.x
        return block.norm1(h, self.ctx.embedded_timestep, self.ctx.temb)[0]


class DiT(torch.nn.Module):
    """A `CosmosTransformer3DModel` called as embed -> `policy.run_stack` -> head."""

    def __init__(self, transformer: CosmosTransformer3DModel, cond_embedder: torch.nn.Module | None = None):
        super().__init__()
        self.transformer = transformer
        modulate_per_frame(transformer)
        self.cond_embedder = cond_embedder  # (actions, T_latent) -> (temb add (B, T, 3D), sinusoid add (B, T, D))
        self.compiled_blocks: list | None = None  # a plain list: not submodules, so the state dict is unchanged

    def compile_blocks(self) -> None:
        """torch.compile every block (regional compilation: one block graph, not the whole call, so a cache policy
        can still run any range of blocks). It fuses the many small kernels between the matmuls of these narrow
        blocks: on 2 CPU cores a bundled-model call takes ~28% less time (README), after a first compile of ~20 s
        (seconds once torch's on-disk cache holds it). Policies whose work runs in hooks inside the blocks
        (diffusers' caches) keep the eager modules, so their hooks and bookkeeping run as written. Idempotent."""
        if self.compiled_blocks is None:
            blocks = self.transformer.transformer_blocks
            # torch compiles each block object on its own (graphs of one structure, mostly from its cache), and a
            # new batch size compiles once more; past the limit (default 8) the rest would silently run eagerly
            torch._dynamo.config.recompile_limit += 4 * len(blocks)
            self.compiled_blocks = [torch.compile(block) for block in blocks]

    def embed(self, hidden_states, timestep, encoder_hidden_states, condition_mask=None, padding_mask=None,
              fps=None, attention_mask=None, frame_cond=None) -> tuple[torch.Tensor, StackContext]:
        m, cfg = self.transformer, self.transformer.config
        batch_size, _, num_frames, height, width = hidden_states.shape
        wdtype = m.patch_embed.proj.weight.dtype  # callers keep latents fp32; timesteps stay fp32 (embed_timestep)
        latents, hidden_states = hidden_states, hidden_states.to(wdtype)
        frame_is_cond = None
        if condition_mask is not None:
            condition_mask = condition_mask.to(wdtype)
            hidden_states = torch.cat([hidden_states, condition_mask], dim=1)
            frame_is_cond = condition_mask[0, 0, ::cfg.patch_size[0], 0, 0]
        if cfg.concat_padding_mask:
            if padding_mask is None:
                padding_mask = hidden_states.new_zeros(1, 1, height, width)
            padding_mask = transforms.functional.resize(
                padding_mask, list(hidden_states.shape[-2:]), interpolation=transforms.InterpolationMode.NEAREST)
            hidden_states = torch.cat(
                [hidden_states, padding_mask.unsqueeze(2).repeat(batch_size, 1, num_frames, 1, 1)], dim=1)
        if attention_mask is not None:
            attention_mask = attention_mask.unsqueeze(1).unsqueeze(1)
        image_rotary_emb = m.rope(hidden_states, fps=fps)
        extra_pos_emb = m.learnable_pos_embed(hidden_states) if cfg.extra_pos_embed_type else None
        p_t, p_h, p_w = cfg.patch_size
        grid = (num_frames // p_t, height // p_h, width // p_w)
        h = m.patch_embed(hidden_states).flatten(1, 3)

        if timestep.ndim == 1:
            temb, embedded_timestep = m.time_embed(h, timestep)
            if frame_cond is not None:
                raise ValueError("per-frame conditioning needs per-frame timesteps of shape [B, 1, T, 1, 1]")
        elif timestep.ndim == 5:
            if timestep.shape != (batch_size, 1, num_frames, 1, 1):
                raise ValueError(f"Expected timestep of shape [B, 1, T, 1, 1], got {tuple(timestep.shape)}")
            temb, embedded_timestep = self.embed_timestep(timestep.view(batch_size, num_frames), frame_cond)
            # Kept per frame (diffusers expands them to every token here): `FrameModulation` broadcasts.
            temb, embedded_timestep = temb.to(h.dtype), embedded_timestep.to(h.dtype)
        else:
            raise ValueError(f"Expected timestep of shape [B, 1, T, 1, 1] or [B], got {tuple(timestep.shape)}")

        text_context, img_context = (encoder_hidden_states if isinstance(encoder_hidden_states, tuple)
                                     else (encoder_hidden_states, None))
        if cfg.use_crossattn_projection:
            text_context = m.crossattn_proj(text_context)
        if img_context is not None and cfg.img_context_dim_in:
            img_context = m.img_context_proj(img_context)
        context = (text_context, img_context) if isinstance(encoder_hidden_states, tuple) else text_context
        return h, StackContext(context, embedded_timestep, temb, image_rotary_emb, extra_pos_emb, attention_mask, grid,
                               frame_is_cond, latents)

    def embed_timestep(self, timestep: torch.Tensor, frame_cond: torch.Tensor | None = None):
        """(B, T) timesteps (+ actions) -> temb (B, T, 3D) and embedded_timestep (B, T, D).

        diffusers' `CosmosEmbedding.forward` plus Cosmos' action terms: `temb = t_embedder(sin) + a3D`, and the
        D-term goes in before the RMSNorm, `embedded_timestep = norm(sin + aD)`. The embedding runs in the dtype
        of `time_embed`'s weights (fp32 when the model keeps them so, as NVIDIA's 2.5 does), on the timestep in it.
        """
        te = self.transformer.time_embed
        b, t = timestep.shape
        dtype = te.t_embedder.linear_1.weight.dtype
        # an embedding in the weights' dtype sees the timestep in that dtype, as Predict2 and diffusers' Cosmos 2
        # pipeline pass it; fp32 (2.5, `fp32_time_embedding`) the exact one
        proj = te.time_proj(timestep.flatten().to(dtype)).to(dtype).view(b, t, -1)
        if frame_cond is None:
            return te.t_embedder(proj), te.norm(proj)
        a3d, ad = self.cond_embedder(frame_cond, t)
        return te.t_embedder(proj) + a3d.to(proj.dtype), te.norm(proj + ad.to(proj.dtype))

    def head(self, h: torch.Tensor, ctx: StackContext) -> torch.Tensor:
        m = self.transformer
        p_t, p_h, p_w = m.config.patch_size
        h = m.norm_out(h, ctx.embedded_timestep, ctx.temb)
        h = m.proj_out(h)
        h = h.unflatten(2, (p_h, p_w, p_t, -1)).unflatten(1, ctx.grid)
        # Same (non-inverse-looking) permutation as diffusers' forward.
        h = h.permute(0, 7, 1, 6, 2, 4, 3, 5)
        return h.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(self, policy, call, timing: bool = False, **inputs) -> torch.Tensor:
        """One model call (`call`: a `ModelCall`, one record per sample): the policy decides, per sample, how the
        block stack output is obtained. With `timing`, the policy's own time (outside block forwards) goes to
        `policy_ms`."""
        x, ctx = self.embed(**inputs)
        stack = BlockStack(self, x, ctx, timing=timing, compiled=not policy.works_inside_blocks)
        if timing:
            sync(x.device)
            t0 = time.perf_counter()
        h = policy.run_stack(stack, call)
        if timing and not policy.works_inside_blocks:
            sync(x.device)
            call.policy_ms = (time.perf_counter() - t0) * 1e3 - stack.block_ms
        for rec, n in zip(call, stack.sample_blocks):
            rec.blocks_run = n
        return self.head(h, ctx)
