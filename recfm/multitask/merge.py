"""TIES merging (Yadav et al., 2023) of checkpoints' adapter weights: RecFound's Model Merge (4.4).

For each tensor name, with the task vectors ``tau_c = theta_c - theta_base`` of the checkpoints c:

1. trim: keep the top ``density`` fraction of each ``tau_c``'s entries by magnitude, zero the rest;
2. elect: the sign of each entry is the sign of the sum of the trimmed task vectors (the side with
   more total mass wins);
3. disjoint mean: average, per entry, only the trimmed values that agree with the elected sign
   (entries where none agrees stay 0);
4. ``theta = theta_base + scale * merged``.

``base`` is what the checkpoints were trained from: for LoRA-style experts the weights at
initialisation (B = 0), or None for zeros (then the checkpoints themselves are the task vectors).

Two spaces to merge LoRA experts in (``space``):

- ``tensors``: every tensor on its own, the A and the B of an expert separately. This is what
  RecFound's public code does (``merge/merge_moe.py`` merges the adapter's state-dict tensors one
  by one, the initial LoRA model as base), and our default.
- ``delta``: each expert's update ``A @ B`` (what it adds to the frozen weight) is the task
  vector; the merged update is factorised back to rank r by SVD (``A' = U sqrt(S)``, ``B' =
  sqrt(S) V^T``, the best rank-r approximation). Merging A and B apart can cancel experts whose
  factors differ only by a sign (``(-A)(-B) = AB``): in delta space they agree. Tensors that are
  not LoRA factors (routers, task embeddings) are merged as tensors in both.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch


def trim_top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """``tau`` with all but its ``ceil(density * numel)`` largest-magnitude entries set to 0 (ties kept by index order)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    flat = tau.reshape(-1)
    keep = max(1, int(torch.ceil(torch.tensor(density * flat.numel())).item()))
    if keep >= flat.numel():
        return tau.clone()
    # stable order: among equal magnitudes the earlier index wins, so results never depend on sort internals
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:keep]
    out = torch.zeros_like(flat)
    out[order] = flat[order]
    return out.view_as(tau)


def ties_merge_tensors(taus: Sequence[torch.Tensor], density: float = 0.2) -> torch.Tensor:
    """The TIES merge of task vectors of one tensor (steps 1-3 of the module doc)."""
    if not taus:
        raise ValueError("nothing to merge")
    shapes = {tuple(t.shape) for t in taus}
    if len(shapes) != 1:
        raise ValueError(f"task vectors of different shapes: {sorted(shapes)}")
    trimmed = torch.stack([trim_top_k(t.float(), density) for t in taus])
    elected = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = (trimmed * agree).sum(0)
    count = agree.sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def ties_merge(
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    base: Mapping[str, torch.Tensor] | None = None,
    density: float = 0.2,
    scale: float = 1.0,
    names: Sequence[str] | None = None,
    space: Literal["tensors", "delta"] = "tensors",
) -> dict[str, torch.Tensor]:
    """Merge the tensors ``names`` (default: every name the checkpoints share) of several state dicts,
    in ``space`` (module doc). In delta space, ``X.lora_A`` [n, in, r] and ``X.lora_B`` [n, r, out]
    are the factors of n experts' updates ``A_j @ B_j``."""
    if space not in ("tensors", "delta"):
        raise ValueError(f"space must be 'tensors' or 'delta', got {space!r}")
    if len(checkpoints) < 1:
        raise ValueError("need at least one checkpoint")
    common = set(checkpoints[0])
    for c in checkpoints[1:]:
        common &= set(c)
    names = list(names) if names is not None else sorted(common)
    missing = [n for n in names if n not in common]
    if missing:
        raise KeyError(f"tensors missing from some checkpoints: {missing[:5]}")
    merged = {}
    if space == "delta":
        for a_name in [n for n in names if n.endswith("lora_A") and n[: -1] + "B" in names]:
            b_name = a_name[: -1] + "B"
            merged[a_name], merged[b_name] = _merge_lora_deltas(
                [(c[a_name], c[b_name]) for c in checkpoints],
                None if base is None else (base[a_name], base[b_name]), density, scale)
    for name in names:
        if name in merged:
            continue
        ref = checkpoints[0][name]
        origin = base[name].float() if base is not None else torch.zeros_like(ref, dtype=torch.float32)
        tau = ties_merge_tensors([c[name].float() - origin for c in checkpoints], density)
        merged[name] = (origin + scale * tau).to(ref.dtype)
    return merged


def _merge_lora_deltas(factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       base: tuple[torch.Tensor, torch.Tensor] | None, density: float,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TIES over the experts' updates ``A @ B`` ([n, in, r] @ [n, r, out]), refactorised to rank r."""
    a_ref, b_ref = factors[0]
    origin = torch.zeros(a_ref.shape[0], a_ref.shape[1], b_ref.shape[2]) if base is None else \
        torch.bmm(base[0].float(), base[1].float())
    tau = ties_merge_tensors([torch.bmm(a.float(), b.float()) - origin for a, b in factors], density)
    delta = origin + scale * tau
    u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
    r = a_ref.shape[2]
    root = sv[:, :r].sqrt()
    return (u[:, :, :r] * root[:, None, :]).to(a_ref.dtype), (root[:, :, None] * vh[:, :r, :]).to(b_ref.dtype)
