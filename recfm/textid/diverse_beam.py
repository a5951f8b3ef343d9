"""Diverse (group) beam search, batched over many items, on a model's own forward pass + KV cache.

transformers 5 removed group beam search (``num_beam_groups`` / ``diversity_penalty``) from core
``generate``, so IDGenRec's ID generator gets it here (Vijayakumar et al. 2016, Hamming diversity).

    ids = diverse_beam_search(t5, tok, item_texts, num_groups=5, diversity_penalty=0.3,
                              min_new_tokens=1, max_new_tokens=9, batch_size=64)
    ids[i]   # 5 normalised candidate IDs for item i: the best hypothesis of each group, in group order

The search, per item (the batched code does exactly this for ``batch_size`` items at once, and
``tests/test_textid_idgen.py`` checks it against a per-item Python-loop reference):

* ``G = num_groups`` groups of ``B = beams_per_group`` beams. Beam 0 of each group starts with
  score 0, the others with -1e9 (so step 0 does not fill a group with copies of one beam).
* Step ``t`` (``t`` ID tokens generated so far): one forward pass gives every running beam's
  next-token log-probabilities (``log_softmax`` in float32). While ``t < min_new_tokens`` EOS gets
  -inf. Groups are then decoded in order ``g = 0..G-1``: a token's log-prob in group ``g`` is
  lowered by ``diversity_penalty * c(v)``, ``c(v)`` = how many running beams of groups ``< g``
  chose token ``v`` at this step (groups already finished choose nothing). Candidate score =
  beam score + penalised log-prob (the penalty accumulates into the beam score, as in Vijayakumar
  et al. and transformers 4's implementation). The ``2B`` best candidates (ties: lower ``beam*V + token``
  first) are walked in rank order: an EOS candidate of rank ``< B`` becomes a finished hypothesis
  with score ``s / (t+1) ** length_penalty`` (``t`` tokens + EOS); the first ``B`` non-EOS
  candidates become the group's running beams. A group keeps its ``B`` best hypotheses (ties: the
  earlier one) and is finished once it holds ``B`` of them and the worst is at least as good as
  ``best running score / (t+1) ** length_penalty`` (transformers' ``early_stopping=False`` rule).
* After ``max_new_tokens`` steps the running beams of unfinished groups become hypotheses too
  (``max_new_tokens`` tokens, no EOS, score ``s / max_new_tokens ** length_penalty``).
* The result per group is its best hypothesis; the ID length in tokens (EOS not counted) is
  always within ``[min_new_tokens, max_new_tokens]``.

Batching: texts are sorted by tokenized length and cut into chunks of ``batch_size`` items (``G*B``
decoder rows each); one forward pass per step serves all groups (a group's logits depend only on
its own prefixes, fixed at the end of the previous step); only the groups' selection is sequential.
Per row only the ``2B + (G-1)*B + 8`` best log-probs are kept (one ``topk`` per step): a row has at
most ``(G-1)*B`` penalised tokens, so nothing outside that set can reach a group's ``2B`` best
candidates, and the result is exact. Step 0 runs once per item (all its beams start alike) and is
repeated per beam; the rows of a finished group leave the batch at once, so the decoder only runs
on unfinished (item, group) pairs. Beams are reordered in the decoder self-attention cache only:
cross-attention keys/values are identical for all beams of one item. Results do not depend on
``batch_size`` beyond float rounding (padding and batch shape can change logits in the last bits).

Models: encoder-decoders (T5 from ``recfm.models.build_seq2seq`` / ``load_seq2seq``) and
decoder-only causal LMs (the text is the prompt, left-padded, with explicit position ids; a
trailing EOS the tokenizer appends is removed). Greedy/deterministic: no sampling anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from recfm.models.batching import last_logits_only, pad_batch
from recfm.textid.ids import normalize_id

_INACTIVE = -1e9  # score of the not-yet-used beams of a group at step 0 (as transformers 4 did)
_TIE_MARGIN = 8  # extra top-k candidates so ties at the 2B boundary break by index, not by topk


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # generated token ids, EOS and padding excluded
    score: float  # length-normalised score (see module docstring)


def diverse_beam_search(
    model,
    tokenizer,
    texts: Sequence[str],
    num_groups: int = 5,
    beams_per_group: int = 1,
    diversity_penalty: float = 0.0,
    min_new_tokens: int = 1,
    max_new_tokens: int = 9,
    batch_size: int = 64,
    *,
    length_penalty: float = 1.0,
    max_source_length: int = 256,
    normalize: bool = True,
    no_repeat_words: bool = False,
) -> list[list[str]]:
    """``num_groups`` candidate IDs per text: the best hypothesis of each group, in group order,
    decoded (``skip_special_tokens``) and, if ``normalize``, passed through
    ``recfm.textid.ids.normalize_id`` (an empty string is an invalid candidate the caller skips).
    ``min_new_tokens``/``max_new_tokens`` bound the ID length in tokens, EOS not counted.
    ``no_repeat_words`` forbids a hypothesis to repeat a word-initial token it already holds (no
    "1996 1996 ...").
    """
    hyps = diverse_beam_search_tokens(
        model, tokenizer, texts, num_groups, beams_per_group, diversity_penalty, min_new_tokens,
        max_new_tokens, batch_size, length_penalty=length_penalty, max_source_length=max_source_length,
        no_repeat_words=no_repeat_words,
    )
    clean = normalize_id if normalize else str
    flat = [list(h.tokens) for per_item in hyps for h in per_item]
    decoded = tokenizer.batch_decode(flat, skip_special_tokens=True) if flat else []
    out, k = [], 0
    for per_item in hyps:
        out.append([clean(s) for s in decoded[k : k + len(per_item)]])
        k += len(per_item)
    return out


@torch.inference_mode()
def diverse_beam_search_tokens(
    model,
    tokenizer,
    texts: Sequence[str],
    num_groups: int = 5,
    beams_per_group: int = 1,
    diversity_penalty: float = 0.0,
    min_new_tokens: int = 1,
    max_new_tokens: int = 9,
    batch_size: int = 64,
    *,
    length_penalty: float = 1.0,
    max_source_length: int = 256,
    no_repeat_words: bool = False,
) -> list[list[Hypothesis]]:
    """The search itself: per text, ``num_groups`` ``Hypothesis`` (token ids + normalised score)."""
    G, B = int(num_groups), int(beams_per_group)
    if G < 1 or B < 1:
        raise ValueError(f"num_groups and beams_per_group must be >= 1 (got {G}, {B})")
    if max_new_tokens < 1 or min_new_tokens < 0 or min_new_tokens > max_new_tokens:
        raise ValueError(f"need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1 "
                         f"(got {min_new_tokens}, {max_new_tokens})")
    if diversity_penalty < 0:
        raise ValueError(f"diversity_penalty must be >= 0 (got {diversity_penalty})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    eos = _eos_id(model, tokenizer)
    word_starts = word_start_tokens(tokenizer) if no_repeat_words else None
    texts = list(texts)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    encoded = encode_sources(tokenizer, texts, max_source_length, causal=not encoder_decoder)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # stable: ties keep text order
    results: list[list[Hypothesis] | None] = [None] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            stepper = (_Seq2SeqStepper if encoder_decoder else _CausalStepper)(
                model, [encoded[i] for i in chunk], G * B, _pad_id(model, tokenizer, eos)
            )
            for i, hyps in zip(chunk, _search_chunk(stepper, len(chunk), G, B, eos, float(diversity_penalty),
                                                    int(min_new_tokens), int(max_new_tokens), float(length_penalty),
                                                    word_starts)):
                results[i] = hyps
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def word_start_tokens(tokenizer) -> torch.Tensor:
    """(V,) True where a token begins a word: SentencePiece's "▁" or byte-level BPE's "Ġ" prefix."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([bool(p) and p[0] in "\u2581\u0120" and len(p) > 1 for p in pieces], dtype=torch.bool)


def encode_sources(tokenizer, texts: Sequence[str], max_source_length: int, causal: bool) -> list[list[int]]:
    """Token ids of each source text. Encoder-decoders: as the tokenizer encodes them (T5 appends
    EOS). Causal LMs: the prompt, with a trailing EOS (which a T5-style tokenizer appends) removed,
    truncated from the left so the end of the prompt survives."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=not causal,
                    max_length=None if causal else max_source_length)["input_ids"]
    if causal:
        eos = tokenizer.eos_token_id
        ids = [(x[:-1] if x and eos is not None and x[-1] == eos else x)[-max_source_length:] for x in ids]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"text {empty[0]} ({texts[empty[0]]!r}) encodes to no tokens")
    return [list(x) for x in ids]


def _eos_id(model, tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(model.generation_config, "eos_token_id", None) or model.config.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    if eos is None:
        raise ValueError("diverse_beam_search needs an EOS token id (tokenizer.eos_token_id)")
    return int(eos)


def _pad_id(model, tokenizer, eos: int) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(model.config, "pad_token_id", None)
    return int(eos if pad is None else pad)


# ---------------------------------------------------------------------------------------------
# Forward passes with a KV cache: one "stepper" per chunk of items. ``logits()`` gives the next-
# token logits of every row ([items, V] at step 0, when all beams of an item are alike; then
# [rows, V]); ``advance(src_rows, tokens)`` makes row i continue old row src_rows[i] with tokens[i].
# ---------------------------------------------------------------------------------------------


class _Seq2SeqStepper:
    """Encoder run once per item; decoder rows = items x (G*B) beams, one token per step. Step 0
    (every beam at the decoder start token) runs once per item and is then repeated per beam."""

    def __init__(self, model, sources: list[list[int]], rows_per_item: int, pad: int):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        self.model = model
        self.rows_per_item = rows_per_item
        device = next(model.parameters()).device
        ids, mask = pad_batch(sources, pad, "right")  # right padding, whatever the tokenizer's side
        ids, mask = ids.to(device), mask.to(device)
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        self.encoder_outputs = BaseModelOutput(last_hidden_state=hidden)
        self.mask = mask
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        start = model.config.decoder_start_token_id
        if start is None:
            start = pad
        self.next_tokens = torch.full((len(sources), 1), int(start), dtype=torch.long, device=device)
        self._expanded = False

    def logits(self) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask,
                         decoder_input_ids=self.next_tokens, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        logits = out.logits[:, -1, :]
        if not self._expanded:  # step 0: one row per item so far -> one per beam
            r = self.rows_per_item
            self.cache.batch_repeat_interleave(r)
            self.encoder_outputs = type(self.encoder_outputs)(
                last_hidden_state=self.encoder_outputs.last_hidden_state.repeat_interleave(r, 0))
            self.mask = self.mask.repeat_interleave(r, 0)
            self._expanded = True
        return logits  # step 0: [items, V], the caller repeats its top-k per beam

    def advance(self, src_rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Row i of the next step continues old row ``src_rows[i]`` with ``tokens[i]``. Fewer rows
        than before: finished groups left. Source rows are always of the same item, so encoder
        states, mask and cross-attention keys/values only move when rows leave."""
        if src_rows.numel() != self.mask.shape[0]:
            self.cache.cross_attention_cache.reorder_cache(src_rows)
            self.encoder_outputs = type(self.encoder_outputs)(
                last_hidden_state=self.encoder_outputs.last_hidden_state[src_rows])
            self.mask = self.mask[src_rows]
        self.cache.self_attention_cache.reorder_cache(src_rows)
        self.next_tokens = tokens.view(-1, 1)


class _CausalStepper:
    """Prompt run once per item (left-padded, explicit positions), its cache repeated per beam."""

    def __init__(self, model, sources: list[list[int]], rows_per_item: int, pad: int):
        from transformers.cache_utils import DynamicCache

        self.model = model
        device = next(model.parameters()).device
        n, length = len(sources), max(len(s) for s in sources)
        ids = torch.full((n, length), pad, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, s in enumerate(sources):
            ids[i, length - len(s) :] = torch.tensor(s)
            mask[i, length - len(s) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = last_logits_only(model)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    past_key_values=DynamicCache(), use_cache=True, **extra)
        self.cache = out.past_key_values
        self.cache.batch_repeat_interleave(rows_per_item)
        self._first = out.logits[:, -1, :]  # [items, V]: the caller repeats its top-k per beam
        self.mask = mask.repeat_interleave(rows_per_item, 0)
        self.next_pos = (positions[:, -1] + 1).repeat_interleave(rows_per_item, 0)
        self.next_tokens: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.model(input_ids=self.next_tokens, attention_mask=self.mask, position_ids=self.next_pos[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :]

    def advance(self, src_rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """As ``_Seq2SeqStepper.advance``."""
        self.cache.reorder_cache(src_rows)
        self.mask = self.mask[src_rows]
        self.next_pos = self.next_pos[src_rows]
        self.next_tokens = tokens.view(-1, 1)


# ---------------------------------------------------------------------------------------------
# The search over one chunk
# ---------------------------------------------------------------------------------------------


def _top_candidates(cand: torch.Tensor, flat: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_keep`` best candidates of each row, best first, as (score, flat index); equal
    scores: lower flat index (``beam * V + token``) first."""
    o = flat.argsort(dim=1)
    cand, flat = cand.gather(1, o), flat.gather(1, o)
    o = cand.argsort(dim=1, descending=True, stable=True)[:, :n_keep]
    return cand.gather(1, o), flat.gather(1, o)


def _merge_hyps(h_score, h_tok, h_len, new_score, new_tok, new_len, B: int):
    """Keep the B best of (held, new) per row; ties keep the earlier (held first, then rank order).
    Empty slots have score -inf."""
    score = torch.cat([h_score, new_score], dim=1)
    o = score.argsort(dim=1, descending=True, stable=True)[:, :B]
    tok = torch.cat([h_tok, new_tok], dim=1)
    length = torch.cat([h_len, new_len], dim=1)
    return score.gather(1, o), tok.gather(1, o[..., None].expand(-1, -1, tok.shape[-1])), length.gather(1, o)


def _search_chunk(stepper, n: int, G: int, B: int, eos: int, penalty: float, min_new: int, max_new: int,
                  lp: float, word_starts: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    device = stepper.next_tokens.device if stepper.next_tokens is not None else stepper.mask.device
    R = G * B
    scores = torch.full((n, G, B), _INACTIVE, device=device)
    scores[:, :, 0] = 0.0
    seqs = torch.zeros((n, G, B, max_new), dtype=torch.long, device=device)
    h_score = torch.full((n, G, B), -math.inf, device=device)
    h_tok = torch.zeros((n, G, B, max_new), dtype=torch.long, device=device)
    h_len = torch.zeros((n, G, B), dtype=torch.long, device=device)
    done = torch.zeros((n, G), dtype=torch.bool, device=device)
    beam_ar = torch.arange(B, device=device)
    a = n
    # The stepper holds only the rows of unfinished (item, group) pairs: live_rows[i] is the
    # global row (item * R + group * B + beam) of stepper row i.
    live_rows = torch.arange(n * R, device=device)
    row_base = (torch.arange(n, device=device) * R)[:, None, None] + (torch.arange(G, device=device) * B)[None, :, None]

    for t in range(max_new):
        logp = torch.log_softmax(stepper.logits().float(), dim=-1)  # [len(live_rows), V]
        V = logp.shape[-1]
        if V < 2 * B:
            raise ValueError(f"vocabulary ({V}) smaller than 2 * beams_per_group ({2 * B})")
        if t < min_new:
            logp[:, eos] = -math.inf
        if word_starts is not None and t > 0:  # a word this beam already holds may not start again
            held = seqs.view(n * R, max_new)[live_rows, :t]
            ban = word_starts.to(held.device)[held]
            rows = torch.arange(held.shape[0], device=held.device)[:, None].expand_as(held)
            logp[rows[ban], held[ban]] = -math.inf
        # Only each row's best K tokens can reach a group's 2B best candidates: a row has at most
        # (G-1)*B penalised tokens, so its K - (G-1)*B >= 2B best unpenalised ones beat everything
        # outside its top K (_TIE_MARGIN more, so that equal values still break by index).
        use_penalty = bool(penalty) and G > 1
        K = min(V, 2 * B + ((G - 1) * B if use_penalty else 0) + _TIE_MARGIN)
        top_lp, top_i = logp.topk(K, dim=-1)
        if t == 0 and R > 1:  # steppers give step 0 as one row per item (all its beams start alike)
            top_lp, top_i = top_lp.repeat_interleave(R, 0), top_i.repeat_interleave(R, 0)
        if live_rows.numel() != n * R:  # rows of finished groups: never read below (their group is skipped)
            full_lp = top_lp.new_full((n * R, K), -math.inf)
            full_i = top_i.new_zeros((n * R, K))
            full_lp[live_rows], full_i[live_rows] = top_lp, top_i
            top_lp, top_i = full_lp, full_i
        top_lp, top_i = top_lp.view(a, G, B, K), top_i.view(a, G, B, K)
        flat_i = top_i + (beam_ar * V)[None, None, :, None]  # beam * V + token: the tie-break order
        chosen = torch.full((a, G * B), -1, dtype=torch.long, device=device)  # this step's tokens, groups < g
        parent = beam_ar.expand(a, G, B).clone()
        new_tok = torch.full((a, G, B), eos, dtype=torch.long, device=device)
        norm = float(t + 1) ** lp
        arange_a = torch.arange(a, device=device)
        for g in range(G):
            live = ~done[:, g]
            if not bool(live.any()):
                continue
            lpg = top_lp[:, g]
            if use_penalty and g > 0:
                hits = (top_i[:, g].reshape(a, B * K, 1) == chosen[:, None, : g * B]).sum(-1)
                lpg = lpg - penalty * hits.to(lpg.dtype).view(a, B, K)
            cand = (scores[:, g, :, None] + lpg).reshape(a, B * K)
            vals, idx = _top_candidates(cand, flat_i[:, g].reshape(a, B * K), 2 * B)
            beam, tok = idx // V, idx % V
            is_eos = tok == eos
            rank = torch.arange(2 * B, device=device)
            order = (is_eos.long() * (2 * B) + rank).argsort(dim=1)[:, :B]  # first B non-EOS, rank order
            run_beam, run_tok, run_score = beam.gather(1, order), tok.gather(1, order), vals.gather(1, order)
            # finished hypotheses: EOS among the B best candidates
            add = is_eos[:, :B] & live[:, None]
            if bool(add.any()):
                new_score = torch.where(add, vals[:, :B] / norm, torch.full_like(vals[:, :B], -math.inf))
                new_seq = seqs[arange_a[:, None], g, beam[:, :B]]  # [a, B, max_new]; positions >= t are 0
                new_len = torch.full((a, B), t, dtype=torch.long, device=device)
                h_score[:, g], h_tok[:, g], h_len[:, g] = _merge_hyps(
                    h_score[:, g], h_tok[:, g], h_len[:, g], new_score, new_seq, new_len, B)
            lv = live[:, None]
            scores[:, g] = torch.where(lv, run_score, scores[:, g])
            parent[:, g] = torch.where(lv, run_beam, parent[:, g])
            new_tok[:, g] = torch.where(lv, run_tok, new_tok[:, g])
            if use_penalty:
                chosen[:, g * B : (g + 1) * B] = torch.where(lv, run_tok, -1)
            full = torch.isfinite(h_score[:, g]).all(dim=1)
            finished = live & full & (h_score[:, g, B - 1] >= run_score[:, 0] / norm)
            done[:, g] |= finished
        # move the running beams: token sequences and the cache rows
        seqs = seqs.gather(2, parent[..., None].expand(-1, -1, -1, max_new)).clone()
        seqs[:, :, :, t] = new_tok
        if t + 1 == max_new:  # length limit: unfinished groups keep their running beams as hypotheses
            for g in range(G):
                live = ~done[:, g]
                if bool(live.any()):
                    inf = torch.full_like(scores[:, g], -math.inf)
                    new_score = torch.where(live[:, None], scores[:, g] / norm, inf)
                    new_len = torch.full((a, B), max_new, dtype=torch.long, device=device)
                    h_score[:, g], h_tok[:, g], h_len[:, g] = _merge_hyps(
                        h_score[:, g], h_tok[:, g], h_len[:, g], new_score, seqs[:, g], new_len, B)
            break
        keep_rows = (~done)[:, :, None].expand(a, G, B).reshape(-1).nonzero().view(-1)
        if keep_rows.numel() == 0:
            break
        pos_of = torch.full((a * R,), -1, dtype=torch.long, device=device)
        pos_of[live_rows] = torch.arange(live_rows.numel(), device=device)
        src = pos_of[(row_base + parent).view(-1)[keep_rows]]  # a live group's parents are its own live rows
        stepper.advance(src, new_tok.view(-1)[keep_rows])
        live_rows = keep_rows
    hl, hs, ht = h_len[:, :, 0].tolist(), h_score[:, :, 0].tolist(), h_tok[:, :, 0].tolist()
    return [[Hypothesis(tuple(ht[i][g][: hl[i][g]]), hs[i][g]) for g in range(G)] for i in range(n)]
