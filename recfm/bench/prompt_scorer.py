"""Prompt-based click scoring (RecBench-MD): P(Yes) of a Yes/No question about a (history, item) pair.

See :mod:`recfm.bench.scorers` for the formula, the padding rules and how pairs become texts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from recfm.compute import eval_mode
from recfm.models.batching import (autocast_context, autocast_dtype, batch_progress, cache_rows, common_prefix_length,
                                   decoder_layers, forward_params, last_logits_only, length_batches, model_device,
                                   pad_batch, pad_rows, pad_token_id, unwrap_peft)

log = logging.getLogger("recfm.bench")

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO")


def answer_token_ids(
    tokenizer, yes: Sequence[str] = YES_VARIANTS, no: Sequence[str] = NO_VARIANTS
) -> tuple[list[int], list[int]]:
    """Token ids of the spellings of Yes and of No that this tokenizer encodes as ONE token.

    Spellings that map to the same token (e.g. "Yes" and " Yes" for SentencePiece-style
    tokenizers) count once. Raises ValueError when no spelling of an answer is a single token,
    or when a token would count for both answers.
    """

    def single(words: Sequence[str]) -> list[int]:
        found: list[int] = []
        for word in words:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in found and ids[0] != tokenizer.unk_token_id:
                found.append(int(ids[0]))
        return found

    yes_ids, no_ids = single(yes), single(no)
    for name, words, ids in (("Yes", yes, yes_ids), ("No", no, no_ids)):
        if not ids:
            raise ValueError(
                f"prompt scoring needs a single-token '{name}': none of {list(words)} is one token for this "
                f"tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens); use another model or pass "
                f"other answer words"
            )
    if set(yes_ids) & set(no_ids):
        raise ValueError(f"the Yes tokens {yes_ids} and the No tokens {no_ids} overlap")
    return yes_ids, no_ids


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text (e.g. [CLS] / [SEP], <s>, </s>)."""
    probe = "hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []  # the specials change the text's own tokens: add none rather than guess


@dataclass(frozen=True)
class PromptTemplate:
    """The wording of a click-prediction prompt. ``body`` is the instruction part (the user turn
    with a chat template); ``answer_cue`` follows it (the start of the assistant turn)."""

    instruction: str = (
        "You are a recommender system. Below are the items a user interacted with, oldest first. "
        "Decide whether the user will click on the candidate item."
    )
    history_header: str = "User history:"
    empty_history: str = "(no history)"
    candidate_header: str = "Candidate item:"
    question: str = "Will the user click on the candidate item?"
    answer_cue: str = "Answer (Yes or No):"

    def body(self, history: Sequence[str], candidate: str) -> str:
        lines = "\n".join(f"{i}. {title}" for i, title in enumerate(history, 1)) or self.empty_history
        return (
            f"{self.instruction}\n\n{self.history_header}\n{lines}\n\n"
            f"{self.candidate_header} {candidate}\n\n{self.question}"
        )


DEFAULT_TEMPLATE = PromptTemplate()


class PromptScorer:
    """P(Yes) from a causal LM's next-token logits after a click-prediction prompt (see the module doc).

    ``use_chat_template``: None = use the tokenizer's chat template when it has one. Prompts
    longer than ``max_length`` tokens lose their OLDEST history items (and, if even an empty
    history does not fit, their first tokens). ``progress``: None = a tqdm bar for more than
    8 batches. ``autocast="bf16"``: the forward pass in bfloat16 mixed precision (weights and
    scores stay float32); ``"auto"``: bf16 only where the device computes it natively. ``share_prefix``: the prompt tokens the pairs of one history share (all
    but the candidate and the question) go through the model once, and each pair continues from
    their KV cache (same scores as one prompt per pair, within float tolerance; models without a
    plain KV cache fall back to one prompt per pair).
    """

    paradigm = "prompt"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        template: PromptTemplate = DEFAULT_TEMPLATE,
        batch_size: int = 16,
        max_length: int = 512,
        use_chat_template: bool | None = None,
        progress: bool | None = None,
        autocast: str | None = None,
        share_prefix: bool = True,
    ):
        if batch_size < 1 or max_length < 8:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 8, got {batch_size}, {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        self.autocast = autocast_dtype(autocast, model_device(model))
        self.share_prefix = share_prefix
        self.yes_ids, self.no_ids = answer_token_ids(tokenizer)
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_chat:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_chat if use_chat_template is None else bool(use_chat_template)
        # Without a chat template the tokenizer's own leading specials (<s>) are kept and its
        # trailing ones (</s>) dropped: the prompt must END with the answer cue.
        self._prefix = [] if self.use_chat_template else special_affixes(tokenizer)[0]
        self._pad_id = pad_token_id(tokenizer)
        params = forward_params(model)
        self._position_ids = "position_ids" in params
        self._extra: dict = last_logits_only(model)
        self._cacheable = "use_cache" in params and "past_key_values" in params and self._position_ids
        self._last_logits = dict(self._extra)  # for forward passes that do use a cache
        if "use_cache" in params:
            self._extra["use_cache"] = False
        self.truncated = 0  # prompts that lost history items in the last call

    # -- text ------------------------------------------------------------------------------------
    def build_prompt(self, history: Sequence[str], candidate: str) -> str:
        """The full prompt text (special tokens of a chat template included) for one pair."""
        body = self.template.body(history, candidate)
        if not self.use_chat_template:
            return f"{body}\n{self.template.answer_cue}"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
        return text + self.template.answer_cue

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [self._prefix + list(x) for x in ids]

    def token_ids(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> list[list[int]]:
        """Prompt token ids per pair, each at most ``max_length`` long (oldest history items dropped first)."""
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidates")
        ids = self._tokenize([self.build_prompt(h, c) for h, c in zip(histories, candidates)])
        self.truncated = 0
        for p, seq in enumerate(ids):
            if len(seq) <= self.max_length:
                continue
            self.truncated += 1
            history, candidate = list(histories[p]), candidates[p]
            lo, hi = 0, len(history) - 1  # keep the newest k items: largest k in [lo, hi] that fits
            best = None
            while lo <= hi:
                k = (lo + hi) // 2
                trial = self._tokenize([self.build_prompt(history[len(history) - k :] if k else [], candidate)])[0]
                if len(trial) <= self.max_length:
                    best, lo = trial, k + 1
                else:
                    hi = k - 1
            if best is None:  # even without history: keep the end (the candidate and the answer cue)
                trial = self._tokenize([self.build_prompt([], candidate)])[0]
                keep = self.max_length - len(self._prefix)
                best = self._prefix + trial[len(self._prefix) :][-keep:]
            ids[p] = best
        if self.truncated:
            log.info("%d of %d prompts were longer than %d tokens: oldest history items dropped",
                     self.truncated, len(ids), self.max_length)
        return ids

    # -- tensors ---------------------------------------------------------------------------------
    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs (with position ids counted from each prompt's first token)."""
        input_ids, mask = pad_batch(ids, self._pad_id, "left")
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self._position_ids:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        device = model_device(self.model)
        return {k: v.to(device) for k, v in batch.items()}

    def encode(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.collate(self.token_ids(histories, candidates))

    def logit_margin(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LSE(yes logits) - LSE(no logits) at the last position, one per row (keeps gradients)."""
        with autocast_context(model_device(self.model), self.autocast):
            logits = self.model(**batch, **self._extra).logits[:, -1, :].float()
        return self._yes_minus_no(logits)

    def _yes_minus_no(self, logits: torch.Tensor) -> torch.Tensor:
        """LSE(yes logits) - LSE(no logits) of last-position logits [rows, vocab]."""
        return logits[:, self.yes_ids].logsumexp(-1) - logits[:, self.no_ids].logsumexp(-1)

    @property
    def _n_layers(self) -> int:
        return len(unwrap_peft(self.model).model.layers)

    # -- training through the top layers only ---------------------------------------------------
    def frozen_states(self, ids: Sequence[Sequence[int]], top: int) -> list[torch.Tensor]:
        """Each prompt's hidden states below the top ``top`` layers ([len, d] float32 on the CPU):
        what frozen lower layers make of it, the same at every step, so a LoRA on the top layers
        can be trained from them (:meth:`top_margin`)."""
        n_layers = self._n_layers
        device = model_device(self.model)
        out: list[torch.Tensor] = [None] * len(ids)  # type: ignore[list-item]
        with torch.inference_mode(), eval_mode(self.model), autocast_context(device, self.autocast), \
                decoder_layers(self.model, slice(0, n_layers - top), final_norm=False) as inner:
            for rows in length_batches([len(x) for x in ids], self.batch_size):
                batch = self.collate([ids[r] for r in rows])
                hidden = inner(**batch).last_hidden_state.float().cpu()
                for j, r in enumerate(rows):
                    out[r] = hidden[j, hidden.shape[1] - len(ids[r]):].clone()  # left-padded: the row's end
        return out

    def top_margin(self, states: Sequence[torch.Tensor], top: int) -> torch.Tensor:
        """:meth:`logit_margin` of the prompts whose :meth:`frozen_states` are ``states``, running
        only the top ``top`` layers (with gradients for their adapters)."""
        n_layers = self._n_layers
        device = model_device(self.model)
        width = max(len(h) for h in states)
        hidden = torch.zeros(len(states), width, states[0].shape[1])
        for j, h in enumerate(states):
            hidden[j, width - len(h):] = h
        mask = pad_rows([[1] * len(h) for h in states], 0, left=True)
        batch = {"inputs_embeds": hidden.to(device), "attention_mask": mask.to(device),
                 "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(device)}
        with decoder_layers(self.model, slice(n_layers - top, n_layers)), autocast_context(device, self.autocast):
            logits = self.model(**batch, **self._extra).logits[:, -1, :].float()
        return self._yes_minus_no(logits)

    # -- scoring ---------------------------------------------------------------------------------
    def margins(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """The Yes-No log-odds per pair (float64); ``score`` is their sigmoid."""
        if len(candidates) == 0:
            return np.zeros(0)
        ids = self.token_ids(histories, candidates)
        if self.share_prefix and self._cacheable:
            groups: dict[tuple, list[int]] = {}
            for p, h in enumerate(histories):
                groups.setdefault(tuple(h), []).append(p)
            if len(groups) < len(ids):  # some history has several candidates: worth a cache
                shared = self._margins_from_shared_prefixes(ids, list(groups.values()))
                if shared is not None:
                    return shared
        out = np.empty(len(ids), dtype=np.float64)
        batches = length_batches([len(x) for x in ids], self.batch_size)
        bar = batch_progress(len(batches), self.progress, "prompt scoring")
        with eval_mode(self.model), torch.inference_mode(), bar:
            for rows in batches:
                out[rows] = self.logit_margin(self.collate([ids[r] for r in rows])).cpu().numpy()
                bar.update(1)
        return out

    def _margins_from_shared_prefixes(self, ids: list[list[int]], groups: list[list[int]]) -> np.ndarray | None:
        """Margins of the pairs ``ids``, where each of ``groups`` (pairs of one history) runs its
        shared token prefix once, batched with other groups' (left-padded), and each pair runs only
        its own tokens on a copy of its group's cache rows (left-padded too: the padding between
        prefix and suffix is masked, and positions count real tokens, so each row sees exactly its
        own prompt). None when the model's cache cannot be copied by rows."""
        device = model_device(self.model)
        prefix_len = [common_prefix_length([ids[p] for p in g]) for g in groups]
        if min(prefix_len) == 0:  # a history whose prompts share no token: nothing to cache
            return None
        out = np.empty(len(ids), dtype=np.float64)
        batches = length_batches(prefix_len, self.batch_size)
        bar = batch_progress(len(batches), self.progress, "prompt scoring (shared prefixes)")
        with eval_mode(self.model), torch.inference_mode(), bar, autocast_context(device, self.autocast):
            for batch in batches:
                pre_ids, pre_mask = pad_batch([ids[groups[g][0]][: prefix_len[g]] for g in batch], self._pad_id, "left")
                pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
                prefix = self.model(input_ids=pre_ids, attention_mask=pre_mask, use_cache=True,
                                    position_ids=(pre_mask.cumsum(-1) - 1).clamp(min=0),
                                    **self._last_logits).past_key_values
                rows = [(j, p) for j, g in enumerate(batch) for p in groups[g]]
                for start in range(0, len(rows), self.batch_size):
                    part = rows[start : start + self.batch_size]
                    owner = torch.tensor([j for j, _ in part], device=device)
                    past = cache_rows(prefix, owner)
                    if past is None:
                        return None
                    suf_ids, suf_mask = pad_batch([ids[p][prefix_len[batch[j]]:] for j, p in part], self._pad_id, "left")
                    mask = torch.cat([pre_mask[owner], suf_mask.to(device)], dim=1)
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, pre_ids.shape[1]:]
                    logits = self.model(input_ids=suf_ids.to(device), attention_mask=mask, position_ids=positions,
                                        past_key_values=past, use_cache=True,
                                        **self._last_logits).logits[:, -1, :].float()
                    out[[p for _, p in part]] = self._yes_minus_no(logits).cpu().numpy()
                bar.update(1)
        return out

    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """P(Yes) per pair in [0, 1] (float64), the softmax over the Yes and No tokens."""
        m = self.margins(histories, candidates)
        return 0.5 * (1.0 + np.tanh(0.5 * m))  # = sigmoid(m), without overflow for large |m|


# ---------------------------------------------------------------------------------------------
# embedding-based scoring
# ---------------------------------------------------------------------------------------------
