"""The one interface between the denoising loop and a cache method, and the per-call statistics record."""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

import torch


@dataclass
class CallRecord:
    """What happened to one sample in one model call (one guidance branch of one denoising step).

    The loop fills step/branch/timing; the policy fills the decision fields. NaN means "not measured by this
    policy" (e.g. no-cache has no drift). These records become the per-step statistics of the Zarr store.
    A batched call has one record per sample: each sample decides on its own (`ModelCall`).
    """

    step: int                     # denoising step index, 0-based
    num_steps: int                # steps in this prediction
    branch: str                   # guidance branch: "cond", "uncond" or "batched" (both in one batch)
    sample: int = 0               # index of the sample in the batch of the call
    sigma: float = float("nan")   # noise level of the step
    computed: bool = True         # False: the block stack was approximated from the cache
    drift: float = float("nan")   # the drift the decision compared (accumulated, as the policy defines it)
    threshold: float = float("nan")  # threshold in force for this call
    motion: float = float("nan")  # input velocity estimate (motion-aware policies)
    saliency: float = float("nan")  # mean saliency weight in the drift (saliency-aware policies)
    gamma: float = float("nan")   # extrapolation / blending coefficient used when skipping
    warped: float = float("nan")  # fraction of latent frames whose cached residual was warped (WorldCache)
    blocks_run: int = 0           # transformer block forwards actually run (0 for a skipped call w/o probe)
    policy_ms: float = float("nan")  # time in the policy outside block forwards: its decision overhead
                                     # (NaN for diffusers-hook policies, whose work runs inside the blocks)
    wall_ms: float = float("nan")  # wall time of the whole model call (embed + stack + head)
    # policy_ms and wall_ms belong to the batched call: every sample of the call carries the same value.

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


SHARED_FIELDS = ("step", "num_steps", "branch", "sigma")


class ModelCall:
    """One model call on a batch: one `CallRecord` per sample.

    ``call[i]`` is sample i's record, ``len(call)`` the batch size; the shared fields (step, num_steps, branch,
    sigma) read directly (``call.step``). Assigning a field (``call.computed = False``) sets it for every sample:
    a decision for the whole batch. Reading a per-sample field from the call is an error (which sample?).
    """

    __slots__ = ("records",)

    def __init__(self, records: list[CallRecord]):
        object.__setattr__(self, "records", list(records))

    def __getattr__(self, name: str):
        if name in SHARED_FIELDS:
            return getattr(self.records[0], name)
        raise AttributeError(f"ModelCall.{name}: per-sample field, read call[i].{name}" if name in _FIELDS
                             else f"ModelCall has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name not in _FIELDS or name in SHARED_FIELDS or name == "sample":
            raise AttributeError(f"ModelCall.{name} cannot be set (per-sample decision fields only)")
        for r in self.records:
            setattr(r, name, value)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> CallRecord:
        return self.records[i]

    @classmethod
    def new(cls, batch: int, **shared) -> "ModelCall":
        return cls([CallRecord(sample=i, **shared) for i in range(batch)])


_FIELDS = frozenset(CallRecord.field_names())


@dataclass
class PolicyState:
    """Base of a policy's typed cache state (one per sample and guidance branch), as diffusers' hook states.

    Subclasses declare their fields with defaults; `reset()` puts every field back to its default.
    """

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default_factory() if f.default_factory is not MISSING else f.default)


class CachePolicy:
    """A cache method. Per model call it returns the block-stack output, computing it or approximating it.

    Subclasses implement `run_stack(stack, call)` (`call`: a `ModelCall`, one record per sample). State is kept
    per guidance branch, so guidance on, off or batched never mixes caches, and within a branch per sample:
    ``self.states(call)`` is one ``self.state_cls()`` (a `PolicyState` dataclass) per sample, so each sample decides
    on its own drift and its result does not depend on the other samples of the batch (`compute_rows` runs the block
    stack on the samples that compute). ``self.state(branch)`` is one state for the whole batch (policies that
    cannot decide per sample). `begin` starts a new prediction (clears state); `begin_chunk` says which chunk of an
    autoregressive rollout it is (policies that carry state across chunks use it). Nothing is global.
    """

    name = "base"
    state_cls: type[PolicyState] = PolicyState
    works_inside_blocks = False  # True: its work runs in hooks inside the blocks, so `policy_ms` cannot see it
    decides_per_sample = True  # False: one decision for the whole batch (a sample's result depends on the batch)

    def __init__(self, config=None):
        self.config = config
        self._states: dict[str, list[PolicyState] | PolicyState] = {}
        self.num_steps: int | None = None
        self.chunk = 0

    def begin_chunk(self, index: int) -> None:
        """The next prediction is chunk `index` of an autoregressive rollout (0: a new rollout). Read (and set
        back to 0) by `begin`, so a prediction nobody announced as a next chunk never sees an earlier one's state."""
        self.chunk = index

    def begin(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self._states = {}
        self.chunk = 0

    def state(self, branch: str) -> PolicyState:
        """One state for the whole batch of the branch."""
        return self._states.setdefault(branch, self.state_cls())

    def states(self, call: ModelCall) -> list:
        """One state per sample of the call's branch (created on the branch's first call)."""
        sts = self._states.setdefault(call.branch, [self.state_cls() for _ in call])
        if len(sts) != len(call):
            raise ValueError(f"{self.name}: batch of {len(call)} samples in a prediction that started with {len(sts)}")
        return sts

    def run_stack(self, stack, call: CallRecord) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict:
        """What the policy ran with, as results record it: its config's fields ({} without a config)."""
        return self.config.as_dict() if self.config is not None else {}

    def detach(self) -> None:
        """Undo anything the policy attached to the model (only hook-based policies attach)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


HOOKED = "_worldcache_hook_policy"  # the model attribute naming the hook policy attached to it


def release_hooks(model, keep: CachePolicy | None = None) -> None:
    """Detach the hook policy attached to `model` unless it is `keep`. Envs may share one model, and another
    policy's diffusers hooks left on it would run, wanting their own cache context, inside this prediction."""
    other = getattr(model, HOOKED, None)
    if other is not None and other is not keep:
        other.detach()


class NoCache(CachePolicy):
    """Always compute: the reference every cache is measured against."""

    name = "none"

    def run_stack(self, stack, call):
        return stack(stack.x)


def widened(t: torch.Tensor) -> torch.Tensor:
    """`t` in fp32 at least: what the caches sum or keep of fp16/bf16 activations (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean|a-b| / mean|b| per sample: shape (B,). In fp32: fp16 rounds the 1e-12 floor to 0 (NaN for two zero
    tensors)."""
    a, b = widened(a), widened(b)
    dims = tuple(range(1, a.ndim))
    num = (a - b).abs().mean(dim=dims)
    den = b.abs().mean(dim=dims).clamp_min(1e-12)
    return num / den


def compute_rows(stack, skip: list[bool], approximate, h: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """The block-stack output of a batch whose samples decided on their own.

    The blocks ``[start, end)`` run on the sub-batch of samples that compute (from `h`, default the stack input);
    ``approximate(i)`` gives sample i's output (1, N, D) where ``skip[i]``.
    """
    h = stack.x if h is None else h
    run = [i for i, s in enumerate(skip) if not s]
    if len(run) == len(skip):
        return stack(h, start)
    out = torch.empty_like(stack.x)
    if run:
        out[run] = stack.subset(run)(h[run], start)
    for i in (i for i, s in enumerate(skip) if s):
        out[i:i + 1] = approximate(i)
    return out


def in_warmup(call: CallRecord, ret_ratio: float) -> bool:
    """The first ``ret_ratio * N`` steps, rounded half up, always compute (layout forms there). Not Python's
    `round` (half to even), which gave 0.1 x 35 four steps but 0.1 x 25 two."""
    return call.step < math.floor(ret_ratio * call.num_steps + 0.5)


def may_skip(call: CallRecord, ret_ratio: float, force_last_step: bool) -> bool:
    """Whether this call is in the window where a policy may skip: after warm-up, and not a forced final step."""
    return not in_warmup(call, ret_ratio) and not (force_last_step and call.step == call.num_steps - 1)
