"""Trie-constrained generation of textual item IDs (IDGenRec section 2.4, eq. 2-3), vectorised.

    trie = TokenTrie.from_texts(id_texts, tokenizer)             # id_texts[i] is item i + 1
    items, scores = constrained_topk(model, tokenizer, trie, prompts, k=10, exclude=histories)

:class:`TrieLogitsProcessor` is a transformers ``LogitsProcessor``: at every step it derives
each row's trie state from the row's generated tokens alone (the previous call's states, found
by an exact match of the tokens, plus one vectorised ``searchsorted`` step; or a full
``TokenTrie.walk``), so beam search's reordering of rows needs no bookkeeping, and masks the
disallowed tokens with ``-inf`` (``TokenTrie.mask_scores``). It keeps the allowed log-probs
exactly as ``prefix_allowed_tokens_fn`` does (masking, no renormalisation: eq. 2), so both give
the same beams and scores; only the time differs.

:func:`constrained_topk` runs beam search with it (seq2seq or decoder-only backbones) and maps
the returned sequences to item indices. ``constraint="prefix_fn"`` runs the same search with
the slow reference (:class:`~recfm.textid.reference.DictTrie` + ``prefix_allowed_tokens_fn``, as the
public IDGenRec code), ``constraint="none"`` runs unconstrained beam search; both are there for
tests and benchmarks.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import torch

from recfm.textid.reference import dict_trie, make_prefix_allowed_tokens_fn
from recfm.textid.trie import DEAD, ExcludedEdges, TokenTrie

try:  # transformers is imported lazily elsewhere in recfm; a processor needs its base class
    from transformers import LogitsProcessor, LogitsProcessorList
except ImportError:  # pragma: no cover - transformers is a dependency
    LogitsProcessor = object  # type: ignore[assignment,misc]
    LogitsProcessorList = list  # type: ignore[assignment,misc]


_HASH_MULT = 0x100000001B3  # FNV-64 prime: row hashes are polynomial in it, mod 2**64 (int64 wraparound)


class TrieLogitsProcessor(LogitsProcessor):
    """Sets the scores of tokens that do not extend a real item ID to ``-inf`` (vectorised).

    ``input_ids[:, prompt_length:]`` is the generated part: for seq2seq models ``input_ids`` are
    decoder ids starting with ``decoder_start_token_id`` (``prompt_length=1``); for causal LMs
    they are the left-padded prompts followed by the generated tokens (``prompt_length`` = the
    padded prompt width). After a complete ID only pad / eos are allowed.

    Each row's state is a function of its generated tokens only, so it is recomputed from them
    and never tracked per row (beam search reorders rows between calls). With ``cache=True``
    (default) the previous call's rows are kept, keyed by a 64-bit hash of their tokens: a row
    whose tokens minus the last one match a previous row exactly (hash found, tokens compared)
    takes that row's state and makes one :meth:`TokenTrie.step`; any other row (first call, a
    hash collision, a new prompt) is walked from the root. So each call costs a fixed handful
    of tensor operations whatever the ID length, and the result is always that of
    ``trie.walk(suffix)``.

    ``inplace=True`` masks ``scores`` in place (what :func:`constrained_topk` uses: beam search
    hands the processor a fresh log-softmax); the default returns a new tensor, as transformers'
    greedy search may keep the tensor it passes (``output_logits``).

    ``exclude`` (:meth:`TokenTrie.exclusion_edges`) also forbids, per prompt, every edge that
    leads only to that prompt's excluded items (e.g. its history), so beams are never spent on them.

    ``renormalize=True`` turns the masked log-probabilities into a log-softmax over the allowed
    tokens (a forced token scores 0): with ``length_penalty=0`` a beam's score is then the log of its
    item's probability under the trie, the quantity the trie-restricted loss trains.
    """

    def __init__(self, trie: TokenTrie, prompt_length: int, *, cache: bool = True, inplace: bool = False,
                 exclude: ExcludedEdges | None = None, renormalize: bool = False):
        if prompt_length < 0:
            raise ValueError("prompt_length must be >= 0")
        self.trie = trie
        self.prompt_length = int(prompt_length)
        self.cache = cache
        self.inplace = inplace
        self.exclude = exclude
        self.renormalize = renormalize
        self._prev: tuple[torch.Tensor, ...] | None = None  # (sorted hashes, row order, tokens, states)
        self._powers: dict[tuple, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget the previous call's rows (never needed for correctness, frees memory)."""
        self._prev = None

    def states(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """The trie state of every row (``-1``: not a prefix of any item ID)."""
        trie = self.trie.to(input_ids.device)
        suffix = input_ids[:, self.prompt_length :]
        rows, t = suffix.shape
        if not self.cache:
            return trie.walk(suffix)
        if t == 0:
            nodes = trie.root(rows)
            hashes = torch.zeros(rows, dtype=torch.long, device=input_ids.device)
        else:
            prev = self._prev
            if prev is None or prev[2].shape[1] != t - 1 or prev[2].shape[0] == 0 or prev[2].device != suffix.device:
                nodes = trie.walk(suffix)
                hashes = self._hash(suffix)
            else:
                prev_hash, prev_order, prev_tokens, prev_nodes = prev
                head = suffix[:, :-1]
                head_hash = self._hash(head)
                idx = torch.searchsorted(prev_hash, head_hash).clamp_(max=prev_hash.shape[0] - 1)
                src = prev_order[idx]
                found = (prev_tokens[src] == head).all(1)  # exact: a hash collision is just a miss
                parent = torch.where(found, prev_nodes[src], DEAD)
                if not bool(found.all()):
                    miss = torch.nonzero(~found).squeeze(1)
                    parent[miss] = trie.walk(head[miss])
                nodes = trie.step(parent, suffix[:, -1])
                hashes = head_hash * _HASH_MULT + suffix[:, -1]
        sorted_hash, order = torch.sort(hashes)
        self._prev = (sorted_hash, order, suffix.clone(), nodes)  # a copy: callers may reuse input_ids
        return nodes

    def _hash(self, tokens: torch.Tensor) -> torch.Tensor:
        """Polynomial hash of each row, the same as folding ``h = h * M + token`` over the row."""
        t = tokens.shape[1]
        key = (t, tokens.device)
        powers = self._powers.get(key)
        if powers is None:
            vals = [pow(_HASH_MULT, t - 1 - j, 1 << 64) for j in range(t)]
            vals = [x - (1 << 64) if x >= 1 << 63 else x for x in vals]
            powers = self._powers[key] = torch.tensor(vals, dtype=torch.long, device=tokens.device)
        return (tokens.long() * powers).sum(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.states(input_ids)
        out = self.trie.mask_scores(scores, nodes, inplace=self.inplace)
        if self.exclude is not None:
            self.trie.to(out.device).mask_excluded(out, nodes, self.exclude)
        if self.renormalize:  # log-softmax over the allowed tokens: what the trie loss trains
            lse = torch.logsumexp(out, dim=-1, keepdim=True)
            out = out.sub_(torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)))
        return out


def _encode(model, tokenizer, prompts, is_encoder_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(prompts, torch.Tensor):
        input_ids = prompts
        attention_mask = torch.ones_like(input_ids)
    elif isinstance(prompts, Mapping) or hasattr(prompts, "keys"):
        input_ids = torch.as_tensor(prompts["input_ids"])
        am = prompts.get("attention_mask") if hasattr(prompts, "get") else None
        attention_mask = torch.ones_like(input_ids) if am is None else torch.as_tensor(am)
    else:
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of strings, an encoded batch (input_ids / attention_mask) "
                            "or a LongTensor of input ids")
        enc = tokenizer(prompts, return_tensors="pt", padding=True,
                        padding_side="right" if is_encoder_decoder else "left")
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
    if not is_encoder_decoder and input_ids.shape[0] and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("decoder-only prompts must be left-padded (generation continues after the last column); "
                         "encode with padding_side='left' or pass the prompts as strings")
    device = model.device
    return input_ids.to(device), attention_mask.to(device)


def _exclude_tensor(exclude, batch: int, trie: TokenTrie) -> tuple[torch.Tensor, int]:
    """Excluded items as a [B, m] tensor (0-padded) and the most excluded real items in one row."""
    if exclude is None:
        return torch.zeros(batch, 0, dtype=torch.long), 0
    exclude = [sorted({int(i) for i in ex}) for ex in exclude]
    if len(exclude) != batch:
        raise ValueError(f"exclude has {len(exclude)} rows for {batch} prompts")
    width = max((len(ex) for ex in exclude), default=0)
    out = torch.zeros(batch, width, dtype=torch.long)
    for b, ex in enumerate(exclude):
        out[b, : len(ex)] = torch.tensor(ex, dtype=torch.long)
    real = torch.isin(out, trie.items.cpu()) & (out > 0)
    return out, int(real.sum(1).max()) if batch else 0


@torch.no_grad()
def constrained_topk(
    model,
    tokenizer,
    trie: TokenTrie,
    prompts: Sequence[str] | Mapping | torch.Tensor,
    k: int,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    exclude: Sequence[Collection[int]] | None = None,
    *,
    constraint: str = "trie",
    renormalize: bool = False,
    **generate_kwargs,
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """Top-k distinct real items per prompt by trie-constrained beam search.

    Args:
        model: a seq2seq (T5) or decoder-only model with ``generate``.
        tokenizer: encodes string prompts (causal LMs: left padding is used).
        trie: the item IDs (:class:`TokenTrie`); its EOS ends every ID and ends the search.
        prompts: strings, an encoded batch (``input_ids`` + ``attention_mask``; left-padded for
            causal LMs) or a LongTensor of input ids.
        k: items to return per prompt.
        num_beams: beam width (default and minimum ``k``). All beams are returned by
            ``generate`` and the best ``k`` distinct items kept.
        max_new_tokens: default the longest ID (with its EOS): every ID fits.
        exclude: per prompt, item indices not to return (e.g. the history). The trie and
            prefix_fn constraints forbid them inside the search (the edges that lead only to a
            prompt's excluded items, :meth:`TokenTrie.exclusion_edges`), so the beam width stays
            ``num_beams`` whatever the history length, and a prompt's answer does not depend on
            the other prompts of the batch. Unconstrained search (``"none"``) drops them after
            the search, with ``num_beams`` grown by the batch's most excluded items.
        renormalize: with ``constraint="trie"``, score tokens by their log-softmax over the allowed
            tokens (:class:`TrieLogitsProcessor`); for models trained with the trie loss.
        constraint: ``"trie"`` (vectorised, :class:`TrieLogitsProcessor`), ``"prefix_fn"`` (the
            slow dict-of-dicts reference through ``prefix_allowed_tokens_fn``) or ``"none"``
            (unconstrained beam search; sequences that are no item are dropped).
        generate_kwargs: passed to ``generate`` (e.g. ``length_penalty``, ``early_stopping``).

    Returns:
        ``(items, scores)``, ``[B, k]`` each on the CPU: item indices (1-based) best first and
        their beam scores (``sequences_scores``: sum of masked log-probs / length **
        length_penalty). Rows with fewer than k items end in ``0`` / ``-inf``. Hypotheses that
        only exist because of transformers' ``-1e9`` placeholder beams are not returned.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    is_enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    input_ids, attention_mask = _encode(model, tokenizer, prompts, is_enc_dec)
    batch = input_ids.shape[0]
    excl, n_excl = _exclude_tensor(exclude, batch, trie)
    beams = max(k, num_beams or k) + (n_excl if constraint == "none" else 0)
    if max_new_tokens is None:
        max_new_tokens = trie.max_len
    if batch == 0:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)

    if is_enc_dec:
        dec = generate_kwargs.get("decoder_input_ids")
        prompt_length = 1 if dec is None else int(dec.shape[1])
    else:
        prompt_length = input_ids.shape[1]

    kwargs = dict(
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=trie.eos_token_id,
        pad_token_id=trie.pad_token_id,
    )
    kwargs.update(generate_kwargs)
    if constraint == "trie":
        edges = trie.exclusion_edges(exclude) if n_excl else None
        kwargs["logits_processor"] = LogitsProcessorList([TrieLogitsProcessor(trie, prompt_length, inplace=True,
                                                                              exclude=edges, renormalize=renormalize)])
    elif constraint == "prefix_fn":
        kwargs["prefix_allowed_tokens_fn"] = make_prefix_allowed_tokens_fn(
            dict_trie(trie), prompt_length, exclude=[set(map(int, ex)) for ex in exclude] if n_excl else None)
    elif constraint != "none":
        raise ValueError(f"constraint must be 'trie', 'prefix_fn' or 'none', not {constraint!r}")

    if is_enc_dec and "past_key_values" not in kwargs and kwargs.get("use_cache", True):
        kwargs["past_key_values"] = beam_shared_cross_cache(model.config)
    elif not is_enc_dec and beams > 1 and input_ids.shape[1] > 1 and "past_key_values" not in kwargs \
            and kwargs.get("use_cache", True):
        kwargs["past_key_values"] = shared_prompt_cache(model, input_ids, attention_mask, beams)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    seqs = out.sequences[:, prompt_length:]
    scores = out.sequences_scores.float()
    length_penalty = kwargs.get("length_penalty", getattr(model.generation_config, "length_penalty", None))
    return select_topk(trie, seqs, scores, batch, k, excl, max_new_tokens=max_new_tokens,
                       length_penalty=1.0 if length_penalty is None else float(length_penalty))


def beam_shared_cross_cache(config):
    """An encoder-decoder cache whose beam reordering skips the cross-attention keys/values.

    Beam search only ever reorders beams within one prompt, and all beams of a prompt attend to
    the same encoder output, so reordering the cross-attention cache copies identical rows: on
    CPU those copies were half of the search time (transformers reorders both caches).
    """
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    class _BeamSharedCrossCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.self_attention_cache.reorder_cache(beam_idx)

    return _BeamSharedCrossCache(DynamicCache(config=config), DynamicCache(config=config))


@torch.no_grad()
def shared_prompt_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, beams: int):
    """The KV cache of every prompt but its last token, computed once per prompt and then repeated
    for its beams. ``generate`` expands a causal LM's prompts to one row per beam *before* the
    prefill, so a 250-token history with 20 beams ran 20 identical prefills; with this cache it runs
    one, and ``generate`` continues from the last prompt token (positions from the attention mask,
    as ``generate`` counts them)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=positions[:, :-1],
          past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(beams)
    return cache


def select_topk(
    trie: TokenTrie,
    generated: torch.Tensor,
    scores: torch.Tensor,
    batch: int,
    k: int,
    exclude: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    length_penalty: float = 1.0,
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """Map generated token rows (``[B * n, t]``, n hypotheses per prompt) and their scores to the
    best ``k`` distinct real items per prompt, dropping excluded items, placeholder hypotheses and
    sequences that are no complete ID; pads with 0 / -inf."""
    trie_cpu = trie.to("cpu")
    items = trie_cpu.items_at(trie_cpu.walk(generated.cpu())).view(batch, -1)
    scores = scores.cpu().float().view(batch, -1)
    n = items.shape[1]
    # transformers seeds beams 1.. with -1e9; hypotheses descending from them carry about
    # -1e9 / length ** length_penalty, far below any real log-probability sum.
    length = max(1, max_new_tokens or trie.max_len)
    floor = -0.5e9 / (length ** max(length_penalty, 0.0))
    valid = (items > 0) & torch.isfinite(scores) & (scores > floor)
    if exclude is not None and exclude.numel():
        valid &= ~(items[:, :, None] == exclude[:, None, :]).any(-1)
    order = torch.argsort(torch.where(valid, scores, -torch.inf), dim=1, descending=True, stable=True)
    items, scores, valid = items.gather(1, order), scores.gather(1, order), valid.gather(1, order)
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)  # [j, i]: i comes before j
    dup = ((items[:, :, None] == items[:, None, :]) & earlier & valid[:, None, :]).any(-1)
    keep = valid & ~dup
    pos = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
    keep = keep.gather(1, pos)
    top_items = torch.where(keep, items.gather(1, pos), 0)
    top_scores = torch.where(keep, scores.gather(1, pos), -torch.inf)
    if top_items.shape[1] < k:
        pad = k - top_items.shape[1]
        top_items = torch.cat([top_items, torch.zeros(batch, pad, dtype=torch.long)], 1)
        top_scores = torch.cat([top_scores, torch.full((batch, pad), -torch.inf)], 1)
    return top_items, top_scores
