"""Token batches and mixed precision shared by every model that feeds an HF transformer
(the benchmark's scorers, the multi-task backbone)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from typing import Sequence

import numpy as np
import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCAST_CHOICES = (*AUTOCAST_DTYPES, "auto")
log = logging.getLogger("recfm.models")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively. A CPU without AVX512-BF16/AMX emulates it:
    measured on an AVX2-only EPYC, SmolLM2 forward+backward ran 22x slower under bf16 autocast."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(autocast: str | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """``"bf16"``/``"fp16"`` -> the dtype; None -> None (full precision); ``"auto"`` -> bf16 where
    ``device`` computes it natively, else full precision. An explicit ``"bf16"`` on a CPU that
    only emulates it is kept (the user asked for it) with a warning."""
    if autocast is not None and autocast not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {sorted(AUTOCAST_CHOICES)} or None, not {autocast!r}")
    if autocast == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if autocast == "bf16" and torch.device(device).type == "cpu" and not native_bf16(device):
        _warn_emulated_bf16()
    return AUTOCAST_DTYPES.get(autocast) if autocast else None


@functools.cache
def _warn_emulated_bf16() -> None:
    log.warning("autocast bf16 on a CPU without native bfloat16 (no AVX512-BF16/AMX): emulated and many times "
                "slower than float32; use autocast: auto to take bf16 only where it is native")


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass (weights stay float32, so LoRA training is unchanged):
    bf16 on a CPU with AMX/AVX512-BF16 runs SmolLM2 about 3x faster forward, 2x forward+backward."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """``[len(rows), longest]`` LongTensor of ``rows`` padded with ``value`` on the right (or the
    left); at least one column, so a batch of empty rows is still a tensor. The one padding helper:
    token batches, ID tables and label rows (``value=-100``) all go through it."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            cols = slice(width - len(r), width) if left else slice(0, len(r))
            out[i, cols] = torch.as_tensor(r, dtype=torch.long)
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``seqs`` padded to the longest on ``side`` ("left" or "right")."""
    if any(len(s) == 0 for s in seqs):
        raise ValueError("cannot batch an empty token sequence")
    left = side == "left"
    return pad_rows(seqs, pad_id, left=left), pad_rows([[1] * len(s) for s in seqs], 0, left=left)


def length_groups(lengths: Sequence[int], slack: float = 1.25) -> list[list[int]]:
    """Indices grouped by similar length (sorted; a group's longest is at most ``slack`` times its
    shortest), so a batch of one long and several short sequences is not padded to the long one:
    padded SmolLM2 forward passes cost as much as their padding (a 475-token record batched with
    three 150-token ones took 2.5x the time of the two groups apart, on CPU)."""
    if slack < 1:
        raise ValueError(f"slack must be >= 1, got {slack}")
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[i] <= slack * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def unwrap_peft(model):
    """The transformers model under a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_params(model) -> set[str]:
    return set(inspect.signature(unwrap_peft(model).forward).parameters)


def last_logits_only(model) -> dict[str, int]:
    """Forward arguments that make a causal LM compute the vocabulary logits of the last position only
    (``logits_to_keep``, older transformers ``num_logits_to_keep``; none if the model has neither): for
    SmolLM2 the output layer over every position is about a fifth of a forward pass."""
    params = forward_params(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def pad_token_id(tokenizer) -> int:
    """The pad-id rule of every batch of a pretrained model: the tokenizer's pad token, else its EOS
    (padding is masked, so any id works, and EOS exists in every causal LM), else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length, longest first (an out-of-memory shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_progress(total_batches: int, progress: bool | None, desc: str):
    from tqdm.auto import tqdm

    show = total_batches > 8 if progress is None else progress
    return tqdm(total=total_batches, desc=desc, unit="batch", leave=False, disable=not show, mininterval=2)


def distinct_texts(texts) -> tuple[list[str], list[int]]:
    """(distinct texts in order of first appearance, index of each input text among them)."""
    position: dict[str, int] = {}
    index = [position.setdefault(t, len(position)) for t in texts]
    return list(position), index


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row shares, leaving each row at least one token of
    its own (what is scored after the prefix)."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def cache_rows(cache, index: torch.Tensor):
    """A new KV cache whose row ``b`` is row ``index[b]`` of ``cache`` (a transformers
    ``DynamicCache``), so one cached prefix can be continued by several rows without being
    changed by them. None when the cache has layers other than plain dynamic ones (sliding windows)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    return DynamicCache([(layer.keys[index], layer.values[index]) for layer in cache.layers])


# Decoder families whose inner model runs its layers in order on ``inputs_embeds`` with nothing
# added to them first (Gemma, for one, scales its input embeddings inside the forward pass).
SPLITTABLE = ("llama", "mistral", "qwen2", "qwen3")


def splittable(model) -> bool:
    """Whether :func:`decoder_layers` can run a part of ``model``'s layer stack."""
    base = unwrap_peft(model)
    inner = getattr(base, "model", None)
    return getattr(base.config, "model_type", None) in SPLITTABLE and all(
        hasattr(inner, a) for a in ("layers", "norm", "embed_tokens"))


@contextlib.contextmanager
def decoder_layers(model, part: slice, final_norm: bool = True):
    """Inside, ``model``'s decoder stack is only ``layers[part]`` (and has no final norm unless
    ``final_norm``): the model's own forward pass, masks and rotary positions run a slice of its
    layers. The bottom slice without the norm maps tokens to the hidden states between two
    layers; the top slice maps those states, given as ``inputs_embeds``, to logits."""
    if not splittable(model):
        raise ValueError(f"cannot split the layers of {type(unwrap_peft(model)).__name__} (supported: {SPLITTABLE})")
    inner = unwrap_peft(model).model
    layers, norm = inner.layers, inner.norm
    inner.layers = torch.nn.ModuleList(list(layers)[part])
    if not final_norm:
        inner.norm = torch.nn.Identity()
    try:
        yield inner
    finally:
        inner.layers, inner.norm = layers, norm
