"""Trie-restricted loss: the softmax of each target ID token over the tokens the trie allows there.

Constrained beam search only ever compares tokens the prefix trie allows after the ID prefix
generated so far, so training the same normalisation is what decoding needs: at each target
position the log-softmax runs over the allowed tokens only, and a position where one token is
allowed (a forced token, most of an ID's tail) has probability 1 and no loss. The loss of an item
is then exactly minus the log of its constrained beam score.

Two forms, both vectorised with the trie's tensors (no Python loop over tokens or rows):

- :func:`trie_cross_entropy` takes the logits a backbone already computed over its whole
  vocabulary (T5, causal LMs) and masks them with :meth:`TokenTrie.mask_scores`;
- :func:`trie_log_probs` takes output states and the output layer and computes logits only for
  the allowed tokens (a dense product at the root, which allows every first token; a sparse
  gather elsewhere), which is what makes small decoders cheap: most of a full-softmax step is the
  output layer.

``tests/textid/test_trie_loss.py`` checks both against a slow per-token implementation on
random tries.
"""

from __future__ import annotations

import torch

from recfm.compute import widened
from recfm.textid.trie import TokenTrie

IGNORE = -100


def prefix_states(trie: TokenTrie, targets: torch.Tensor) -> torch.Tensor:
    """``[N, L]`` trie state *before* each target token: column 0 is the root, column j the state
    after ``targets[:, :j]``. ``targets`` are ID tokens (EOS included), padded with anything past
    the end (those columns' states are not used)."""
    states = torch.empty_like(targets, dtype=torch.long, device=trie.device)
    node = trie.root(targets.shape[0])
    for j in range(targets.shape[1]):
        states[:, j] = node
        node = trie.step(node, targets[:, j])
    return states


class CopyBonus:
    """A logit bonus for writing a word that a row's recent history items have: ``weight[k]`` for each
    time the word is in the ``k``-th most recent item's ID (``recent`` ``[M, K, W]``, word tokens, 0 =
    none). Only words from ``first_word`` on get it (special tokens never do). It does not depend on
    which word it is, so it carries over to a catalog of unseen words."""

    def __init__(self, recent: torch.Tensor, weight: torch.Tensor, first_word: int):
        self.recent, self.weight, self.first_word = recent, weight, first_word

    def rows(self, rows: torch.Tensor) -> "CopyBonus":
        return CopyBonus(self.recent[rows], self.weight, self.first_word)

    def pairs(self, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``[P]``: the bonus of writing ``tokens[i]`` in row ``rows[i]``."""
        hits = (self.recent[rows] == tokens[:, None, None]).sum(-1).to(self.weight.dtype)  # [P, K]
        return (hits @ self.weight) * (tokens >= self.first_word)

    def dense(self, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """``[M, len(tokens)]``: the bonus of writing each of ``tokens`` (distinct) in every row."""
        column = torch.full((vocab_size,), -1, dtype=torch.long, device=tokens.device)
        column[tokens] = torch.arange(len(tokens), device=tokens.device)
        m, k, w = self.recent.shape
        where = column[self.recent]  # [M, K, W]: each recent word's column, -1 if not among tokens
        keep = (where >= 0) & (self.recent >= self.first_word)
        values = self.weight[None, :, None].expand(m, k, w) * keep
        out = torch.zeros(m, len(tokens) + 1, dtype=self.weight.dtype, device=tokens.device)
        return out.scatter_add(1, torch.where(keep, where, len(tokens)).reshape(m, -1), values.reshape(m, -1))[:, :-1]


def trie_log_probs(hidden: torch.Tensor, nodes: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None, trie: TokenTrie, copy: CopyBonus | None = None) -> torch.Tensor:
    """``log p(target | allowed tokens at node)`` per row, with logits ``hidden @ weight.T + bias``
    (+ ``copy``'s bonus per row and token) computed only for the allowed tokens. ``hidden`` ``[M, d]``,
    ``nodes`` / ``targets`` ``[M]``. Rows whose target the trie does not allow there get ``-inf``."""
    hidden = widened(hidden)  # bf16 states under autocast: the sums and logsumexps below run in float32
    m = hidden.shape[0]
    out = hidden.new_zeros(m)
    if m == 0:
        return out
    nodes = nodes.to(trie.device)
    root = nodes == 0
    target_logit = (hidden * weight[targets]).sum(-1) + (bias[targets] if bias is not None else 0)
    if copy is not None:
        target_logit = target_logit + copy.pairs(torch.arange(m, device=hidden.device), targets)
    lse = hidden.new_full((m,), -torch.inf)
    if bool(root.any()):  # every root row allows the same tokens: one dense product
        first = trie.child_tokens[trie.offsets[0] : trie.offsets[1]]
        logits = hidden[root] @ weight[first].T + (bias[first] if bias is not None else 0)
        if copy is not None:
            logits = logits + copy.rows(root).dense(first, weight.shape[0])
        lse[root] = torch.logsumexp(widened(logits), dim=1)
    rest = torch.nonzero(~root).squeeze(1)
    if rest.numel():
        rows, toks = trie.allowed_tokens(nodes[rest])
        rows = rest[rows]
        pair = (hidden[rows] * weight[toks]).sum(-1) + (bias[toks] if bias is not None else 0)
        if copy is not None:
            pair = pair + copy.pairs(rows, toks)
        lse = torch.where(root, lse, segment_logsumexp(pair, rows, m))
    allowed = trie.step(nodes, targets) >= 0
    return torch.where(allowed, target_logit - lse, torch.full_like(lse, -torch.inf))


def segment_logsumexp(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``[n]``: the logsumexp of ``values`` grouped by ``rows`` (``-inf`` for a row with none)."""
    peak = torch.full((n,), -torch.inf, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(0, rows, values.detach(), reduce="amax")
    shift = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = values.new_zeros(n).index_add(0, rows, torch.exp(values - shift[rows]))
    return torch.log(total) + shift


def free_positions(trie: TokenTrie, states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Target positions with a real choice: valid, and more than one token allowed at the state."""
    degree = torch.where(states >= 0, trie.degree[states.clamp(min=0)], torch.zeros_like(states))
    return valid & (degree > 1)


def _label_runs(labels: torch.Tensor, trie: TokenTrie):
    """Each row's run of ID labels, compacted: (column in ``labels``, token, trie state before it, has a
    choice), all ``[N, L]``."""
    n, t = labels.shape
    valid = labels != IGNORE
    count = valid.sum(1)
    first = torch.where(count > 0, valid.int().argmax(1), torch.zeros_like(count))
    width = max(int(count.max()) if n else 0, 1)
    col = first[:, None] + torch.arange(width, device=labels.device)[None]
    inside = torch.arange(width, device=labels.device)[None] < count[:, None]
    col = torch.where(inside, col, first[:, None]).clamp(max=t - 1)
    ids = torch.where(inside, labels.gather(1, col), torch.zeros_like(col))
    states = prefix_states(trie, ids.to(trie.device)).to(labels.device)
    free = free_positions(trie, states.to(trie.device), inside.to(trie.device)).to(labels.device)
    return col, ids, states, free


def free_label_count(labels: torch.Tensor, trie: TokenTrie) -> int:
    """How many label positions :func:`trie_cross_entropy` averages over (those with a choice)."""
    return int(_label_runs(labels, trie)[3].sum())


def trie_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, trie: TokenTrie,
                       reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ID labels under the trie from full-vocabulary ``logits``.

    ``logits`` ``[N, T, V]`` predict ``labels`` ``[N, T]`` position by position (for a causal LM,
    pass ``logits[:, :-1]`` and ``labels[:, 1:]``); each row's ID tokens are one contiguous run of
    labels, the rest :data:`IGNORE`. ``reduction``: ``mean`` over the positions with a choice,
    ``sum``, or ``none`` (``[N]``: minus the log of each row's constrained ID probability)."""
    n, _, v = logits.shape
    col, ids, states, free = _label_runs(labels, trie)
    width = col.shape[1]
    picked = logits.gather(1, col[..., None].expand(n, width, v))[free]  # [F, V]
    masked = trie.mask_scores(picked.float(), states[free])
    token_lp = torch.log_softmax(masked, dim=-1).gather(1, ids[free][:, None]).squeeze(1)
    if reduction == "mean":
        return -token_lp.mean() if token_lp.numel() else logits.sum() * 0
    if reduction == "sum":
        return -token_lp.sum()
    per_row = torch.zeros(n, dtype=token_lp.dtype, device=logits.device)
    return -per_row.index_add(0, torch.nonzero(free)[:, 0], token_lp)
