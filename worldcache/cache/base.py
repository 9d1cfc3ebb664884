"""The one interface between the denoising loop and a cache method, and the per-call statistics record."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch


@dataclass
class CallRecord:
    """What happened in one model call (one guidance branch of one denoising step).

    The loop fills step/branch/timing; the policy fills the decision fields. NaN means "not measured by this
    policy" (e.g. no-cache has no drift). These records become the per-step statistics of the Zarr store.
    """

    step: int                     # denoising step index, 0-based
    num_steps: int                # steps in this prediction
    branch: str                   # guidance branch: "cond", "uncond" or "batched" (both in one batch)
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

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class CachePolicy:
    """A cache method. Per model call it returns the block-stack output, computing it or approximating it.

    Subclasses implement `run_stack`; per-branch state lives in ``self.state(branch)`` (a dict), so guidance on,
    off or batched never mixes caches. `begin` starts a new prediction (clears state). Nothing is global.
    """

    name = "base"
    works_inside_blocks = False  # True: its work runs in hooks inside the blocks, so `policy_ms` cannot see it

    def __init__(self, config=None):
        self.config = config
        self._states: dict[str, dict] = {}

    def begin(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self._states = {}

    def state(self, branch: str) -> dict:
        return self._states.setdefault(branch, {})

    def run_stack(self, stack, call: CallRecord) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def detach(self) -> None:
        """Undo anything the policy attached to the model (only hook-based policies attach)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class NoCache(CachePolicy):
    """Always compute: the reference every cache is measured against."""

    name = "none"

    def run_stack(self, stack, call):
        return stack(stack.x)


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean|a-b| / mean|b| per sample, max over the batch: one env whose input moved forces a compute."""
    dims = tuple(range(1, a.ndim))
    num = (a - b).abs().mean(dim=dims)
    den = b.abs().mean(dim=dims).clamp_min(1e-12)
    return float((num / den).max())


def in_warmup(call: CallRecord, ret_ratio: float) -> bool:
    """The first ``ret_ratio * N`` steps always compute (layout forms there)."""
    return call.step < int(round(ret_ratio * call.num_steps))


def may_skip(call: CallRecord, ret_ratio: float, force_last_step: bool) -> bool:
    """Whether this call is in the window where a policy may skip: after warm-up, and not a forced final step."""
    return not in_warmup(call, ret_ratio) and not (force_last_step and call.step == call.num_steps - 1)
