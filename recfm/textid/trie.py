"""The token-level prefix trie over textual item IDs, as flat tensors (vectorised).

IDGenRec (section 2.4, eq. 2-3) decodes the next item's textual ID under a prefix-tree
constraint: at each step only tokens that extend the generated prefix towards some real item
ID are allowed. :class:`TokenTrie` stores that tree as a handful of int64 tensors so that the
allowed tokens, the next states and the state of a whole generated prefix are computed for a
batch of beams with a few tensor operations and no Python loop over beams:

- nodes are numbered breadth first (root = 0; at each depth in lexicographic order of their
  prefixes), so a node's children are one contiguous run of edges, sorted by token:
  ``children(v) = edges offsets[v] : offsets[v+1]`` with ``child_tokens`` / ``child_nodes``
  (CSR);
- the same edge list, keyed ``parent * key_base + token``, is strictly increasing, so a
  transition is one ``torch.searchsorted`` over ``keys``;
- the node reached by an item ID's last token (EOS) is that item's leaf; ``leaf_item[v]`` is the
  item index there, 0 elsewhere (item indices run 1..n, 0 is padding, as everywhere in recfm).

Every item ID ends with EOS (appended when missing), so no ID is a prefix of another and two
items with the same token sequence are a clash, reported by item. Once an ID is complete (the
state is a leaf), only ``pad`` and ``eos`` may follow, and they keep the state at the leaf:
finished sequences padded by ``generate`` still map to their item. The state ``-1`` is dead (an
invalid prefix): nothing is allowed and every step stays dead.

The slow dict-of-dicts reference it is tested and benchmarked against is
:mod:`recfm.textid.reference`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np
import torch

from recfm.errors import RecfmError
from recfm.models.batching import pad_token_id

DEAD = -1


@dataclass(frozen=True)
class ExcludedEdges:
    """Per prompt, the trie edges that lead only to excluded items (:meth:`TokenTrie.exclusion_edges`).

    ``keys`` (sorted) are ``prompt * (n_nodes + 1) + parent`` and ``tokens`` the edge's token; a
    search over ``n_prompts`` prompts with ``rows / n_prompts`` beams each (rows of one prompt
    contiguous, as ``generate`` lays them out) reads them with :meth:`TokenTrie.mask_excluded`."""

    keys: torch.Tensor
    tokens: torch.Tensor
    n_prompts: int


class DuplicateItemIDError(RecfmError, ValueError):
    """Two or more items have the same token sequence: textual IDs must be unique.

    ``clashes`` lists the groups of item indices that share a sequence."""

    def __init__(self, message: str, clashes: list[list[int]] | None = None):
        super().__init__(message)
        self.clashes = clashes or []


def _as_item_ids(item_ids: Sequence[int] | None, n: int) -> np.ndarray:
    if item_ids is None:
        return np.arange(1, n + 1, dtype=np.int64)
    ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != n:
        raise ValueError(f"item_ids has {ids.shape[0]} entries for {n} sequences")
    if n and ids.min() < 1:
        raise ValueError("item indices must be >= 1 (0 is padding in recfm)")
    if np.unique(ids).shape[0] != n:
        raise ValueError("item_ids must be distinct")
    return ids


class TokenTrie:
    """A prefix trie over token sequences (one per item, each ending in EOS), as tensors.

    Build with :meth:`from_sequences` (token ids) or :meth:`from_texts` (textual IDs and a
    tokenizer). States are node ids (``LongTensor``); ``-1`` is the dead state.

    Attributes (all ``torch.int64``, on :attr:`device`):
        offsets: ``[n_nodes + 1]``, node ``v``'s edges are ``offsets[v]:offsets[v+1]``.
        child_tokens, child_nodes: ``[n_edges]``, the edges' tokens and target nodes.
        keys: ``[n_edges]``, ``parent * key_base + token``, strictly increasing.
        degree: ``[n_nodes]``, number of allowed tokens at each node.
        leaf_item: ``[n_nodes]``, the item whose ID ends at the node, else 0.
        node_parent, node_token, node_depth: ``[n_nodes]`` (root: -1, -1, 0); leaves' pad/eos
            self-loops are edges but not tree links.
        items, item_leaf: ``[n_items]``, each item index and its leaf node.
    """

    def __init__(
        self,
        *,
        offsets: torch.Tensor,
        child_tokens: torch.Tensor,
        child_nodes: torch.Tensor,
        keys: torch.Tensor,
        leaf_item: torch.Tensor,
        node_parent: torch.Tensor,
        node_token: torch.Tensor,
        node_depth: torch.Tensor,
        items: torch.Tensor,
        item_leaf: torch.Tensor,
        key_base: int,
        eos_token_id: int,
        pad_token_id: int,
        max_len: int,
    ):
        self.offsets = offsets
        self.child_tokens = child_tokens
        self.child_nodes = child_nodes
        self.keys = keys
        self.degree = offsets[1:] - offsets[:-1]
        self.leaf_item = leaf_item
        self.node_parent = node_parent
        self.node_token = node_token
        self.node_depth = node_depth
        self.items = items
        self.item_leaf = item_leaf
        self.key_base = int(key_base)
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.max_len = int(max_len)
        # keys / child nodes with a sentinel edge at the end: searchsorted never runs off the end
        self._keys_ext = torch.cat([keys, keys.new_full((1,), torch.iinfo(torch.int64).max)])
        self._child_ext = torch.cat([child_nodes, child_nodes.new_full((1,), DEAD)])
        # a token outside [0, key_base) becomes this: node * key_base + it is < 0, matching no key
        self._bad_token = -(self.n_nodes + 2) * self.key_base
        # per-node start / degree with a zero entry at the end, which the dead state -1 indexes
        self._start_ext = torch.cat([offsets[:-1], offsets.new_zeros(1)])
        self._degree_ext = torch.cat([self.degree, offsets.new_zeros(1)])
        self._devices: dict[torch.device, TokenTrie] = {}
        self._heavy: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sequences(
        cls,
        seqs: Sequence[Sequence[int]],
        eos_token_id: int,
        *,
        pad_token_id: int | None = None,
        item_ids: Sequence[int] | None = None,
    ) -> "TokenTrie":
        """Build the trie over ``seqs`` (one token-id list per item).

        ``seqs[i]`` is item ``item_ids[i]`` (default ``i + 1``: items are 1-based, 0 is padding).
        EOS is appended to a sequence that does not already end with it; EOS inside a sequence,
        negative ids and empty sequences are errors. Two items with the same sequence raise
        :class:`DuplicateItemIDError` naming them. ``pad_token_id`` (default: EOS) is, with
        EOS, what may follow a complete ID.

        Vectorised with numpy: sequences are padded into a matrix, sorted lexicographically,
        and the nodes at each depth are the runs of equal prefixes (longest common prefix of
        neighbouring rows), so 100K IDs of ~12 tokens build in well under a second.
        """
        eos = int(eos_token_id)
        pad = eos if pad_token_id is None else int(pad_token_id)
        if len(seqs) and hasattr(seqs[0], "tolist"):  # tensors / arrays
            seqs = [s.tolist() for s in seqs]
        n = len(seqs)
        ids = _as_item_ids(item_ids, n)
        if n == 0:
            raise ValueError("a TokenTrie needs at least one sequence")
        lens = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
        if lens.min() <= 1:
            bad = [int(i) for i, s in zip(ids, seqs) if len(s) == 0 or list(s) == [eos]][:5]
            if bad:
                raise ValueError(f"empty token sequence (an empty textual ID?) for item(s) {bad}")
        total = int(lens.sum())
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=total)
        if flat.min() < 0:
            raise ValueError("token ids must be >= 0")
        ends = np.cumsum(lens) - 1
        inner_eos = flat == eos
        inner_eos[ends] = False
        if inner_eos.any():
            pos = int(np.flatnonzero(inner_eos)[0])
            row = int(np.searchsorted(ends, pos))
            raise ValueError(f"item {int(ids[row])}: EOS ({eos}) inside its token sequence {list(seqs[row])}")
        need_eos = flat[ends] != eos
        full_lens = lens + need_eos
        width = int(full_lens.max())

        rows = np.repeat(np.arange(n), lens)
        cols = np.arange(total) - np.repeat(ends + 1 - lens, lens)
        mat = np.full((n, width), -1, dtype=np.int64)
        mat[rows, cols] = flat
        mat[np.flatnonzero(need_eos), lens[need_eos]] = eos

        # Lexicographic order of the rows (column 0 is the primary key; -1 pads sort first).
        order = np.lexsort(mat.T[::-1])
        mat, full_lens, ids_sorted = mat[order], full_lens[order], ids[order]

        # Longest common prefix with the previous row (row 0 shares nothing).
        lcp = np.zeros(n, dtype=np.int64)
        if n > 1:
            diff = mat[1:] != mat[:-1]
            lcp[1:] = np.where(diff.any(1), diff.argmax(1), width)
        lcp = np.minimum(lcp, full_lens)
        same = np.zeros(n, dtype=bool)
        same[1:] = lcp[1:] >= full_lens[1:]  # equal to the previous row
        if same.any():
            run = np.cumsum(~same) - 1  # rows with equal sequences share a run
            rows_in = np.flatnonzero(np.isin(run, run[same]))
            cuts = np.flatnonzero(np.diff(run[rows_in])) + 1
            clashes = [sorted(g.tolist()) for g in np.split(ids_sorted[rows_in], cuts)]
            firsts = rows_in[np.concatenate([[0], cuts])].tolist()
            shown = "; ".join(
                f"items {g} all have tokens {mat[f, : full_lens[f]].tolist()}" for g, f in zip(clashes[:5], firsts)
            )
            more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
            raise DuplicateItemIDError(
                f"{len(clashes)} textual ID(s) are shared by several items: {shown}{more}", clashes
            )

        # A node per distinct prefix: row i creates the nodes at depths lcp[i] .. full_lens[i]-1.
        depth = np.arange(width)
        new = (depth[None, :] >= lcp[:, None]) & (depth[None, :] < full_lens[:, None])
        per_depth = new.sum(0)
        base = 1 + np.concatenate([[0], np.cumsum(per_depth)[:-1]])  # root is node 0
        node_at = base[None, :] + np.cumsum(new, axis=0) - 1  # valid where depth < full_lens
        n_nodes = 1 + int(per_depth.sum())

        # Edges in child order (depth-major, lexicographic): child id = edge index + 1.
        dcol, drow = np.nonzero(new.T)  # sorted by depth, then row
        child = node_at[drow, dcol]
        parent = np.where(dcol > 0, node_at[drow, np.maximum(dcol - 1, 0)], 0)
        token = mat[drow, dcol]
        assert np.array_equal(child, np.arange(1, n_nodes)), "node numbering broke"

        node_parent = np.concatenate([[-1], parent])
        node_token = np.concatenate([[-1], token])
        node_depth = np.concatenate([[0], dcol + 1])

        leaves = node_at[np.arange(n), full_lens - 1]
        leaf_item = np.zeros(n_nodes, dtype=np.int64)
        leaf_item[leaves] = ids_sorted

        # Complete IDs may be followed by pad / eos only, staying at their leaf.
        loop_tokens = np.unique(np.array([pad, eos], dtype=np.int64))
        l_parent = np.repeat(leaves, loop_tokens.size)
        l_token = np.tile(loop_tokens, n)
        key_base = int(max(int(mat.max()), pad, eos)) + 1
        e_parent = np.concatenate([parent, l_parent])
        e_token = np.concatenate([token, l_token])
        e_child = np.concatenate([child, l_parent])
        keys = e_parent * key_base + e_token
        perm = np.argsort(keys, kind="stable")
        keys, e_parent, e_token, e_child = keys[perm], e_parent[perm], e_token[perm], e_child[perm]
        if keys.size > 1 and not (np.diff(keys) > 0).all():  # pragma: no cover - guarded by the dup check
            raise RuntimeError("trie edges are not unique")
        offsets = np.zeros(n_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(e_parent, minlength=n_nodes), out=offsets[1:])

        item_order = np.argsort(ids_sorted)
        t = torch.from_numpy
        return cls(
            offsets=t(offsets),
            child_tokens=t(e_token),
            child_nodes=t(e_child),
            keys=t(keys),
            leaf_item=t(leaf_item),
            node_parent=t(node_parent),
            node_token=t(node_token),
            node_depth=t(node_depth),
            items=t(ids_sorted[item_order]),
            item_leaf=t(leaves[item_order]),
            key_base=key_base,
            eos_token_id=eos,
            pad_token_id=pad,
            max_len=width,
        )

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], tokenizer, *, item_ids: Sequence[int] | None = None, prefix: str = ""
    ) -> "TokenTrie":
        """Tokenize textual IDs (no special tokens; EOS is appended) and build the trie.

        ``texts[i]`` is item ``item_ids[i]`` (default ``i + 1``). EOS / pad come from the
        tokenizer (pad defaults to EOS). A clash names the items and their texts. ``prefix`` is
        put before every text when tokenizing: IDs must be tokenized as the model will generate
        them, e.g. ``" "`` for byte-level BPE tokenizers (GPT-2 / Llama 3 style, where a word
        after a space is a different token); SentencePiece-style tokenizers such as
        ``train_tokenizer``'s already mark the word start and need none.
        """
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs an eos token to terminate item IDs")
        enc = tokenizer([prefix + t for t in texts], add_special_tokens=False)["input_ids"]
        pad = pad_token_id(tokenizer)
        try:
            return cls.from_sequences(enc, tokenizer.eos_token_id, pad_token_id=pad, item_ids=item_ids)
        except DuplicateItemIDError as e:
            ids = _as_item_ids(item_ids, len(texts)).tolist()
            text_of = dict(zip(ids, texts))
            shown = "; ".join(" = ".join(repr(text_of[i]) for i in g[:3]) for g in e.clashes[:5])
            raise DuplicateItemIDError(f"{e}. Texts: {shown}", e.clashes) from None

    # ------------------------------------------------------------------ basics
    @property
    def n_nodes(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __repr__(self) -> str:
        return (
            f"TokenTrie(items={self.n_items}, nodes={self.n_nodes}, max_len={self.max_len}, "
            f"eos={self.eos_token_id}, pad={self.pad_token_id}, device={self.device})"
        )

    def to(self, device: torch.device | str) -> "TokenTrie":
        """The same trie with its tensors on ``device`` (cached; ``self`` when already there)."""
        device = torch.device(device)
        if device == self.device or (device.type == self.device.type and device.index is None):
            return self
        if device not in self._devices:
            names = ("offsets", "child_tokens", "child_nodes", "keys", "leaf_item", "node_parent",
                     "node_token", "node_depth", "items", "item_leaf")
            moved = TokenTrie(
                **{k: getattr(self, k).to(device) for k in names},
                key_base=self.key_base,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                max_len=self.max_len,
            )
            self._devices[device] = moved
        return self._devices[device]

    def sequences(self) -> list[list[int]]:
        """Each item's token sequence (with its EOS), in :attr:`items` order."""
        parent = self.node_parent.cpu().numpy()
        token = self.node_token.cpu().numpy()
        depth = self.node_depth.cpu().numpy()
        leaves = self.item_leaf.cpu().numpy()
        out = np.full((leaves.size, self.max_len), -1, dtype=np.int64)
        lens = depth[leaves]
        cur = leaves.copy()
        for _ in range(self.max_len):
            live = cur > 0
            out[np.flatnonzero(live), depth[cur[live]] - 1] = token[cur[live]]
            cur = np.where(live, parent[np.maximum(cur, 0)], 0)
        return [row[:n].tolist() for row, n in zip(out, lens)]

    def item_sequence(self, item: int) -> list[int]:
        """One item's token sequence (with its EOS)."""
        pos = torch.searchsorted(self.items, torch.tensor([int(item)], device=self.device))
        if int(pos) >= self.n_items or int(self.items[pos]) != int(item):
            raise KeyError(f"item {item} is not in the trie")
        v = int(self.item_leaf[pos])
        seq = []
        while v > 0:
            seq.append(int(self.node_token[v]))
            v = int(self.node_parent[v])
        return seq[::-1]

    # ------------------------------------------------------------------ vectorised queries
    def root(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.long, device=self.device)

    def _clean_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device, torch.long)
        return torch.where((tokens >= 0) & (tokens < self.key_base), tokens, self._bad_token)

    def _step_clean(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # nodes >= 0 and clean tokens give a query that is a key iff the edge exists; a dead node
        # (-1) or a bad token gives a negative query, which matches nothing.
        query = torch.add(tokens, nodes, alpha=self.key_base)
        idx = torch.searchsorted(self._keys_ext, query)
        return torch.where(self._keys_ext[idx] == query, self._child_ext[idx], DEAD)

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next states after appending ``tokens`` to the prefixes at ``nodes`` (``-1`` if invalid).

        One ``searchsorted`` of ``node * key_base + token`` in :attr:`keys` for all rows."""
        return self._step_clean(nodes.to(self.device, torch.long), self._clean_tokens(tokens))

    def walk(self, prefixes: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """States after reading each row of ``prefixes`` (``[B, t]``) from the root (or ``start``).

        ``t`` vectorised steps over all rows (the prefixes of generated IDs are short)."""
        if prefixes.dim() != 2:
            raise ValueError(f"prefixes must be [batch, length], got shape {tuple(prefixes.shape)}")
        prefixes = self._clean_tokens(prefixes)
        nodes = self.root(prefixes.shape[0]) if start is None else start.to(self.device, torch.long)
        for j in range(prefixes.shape[1]):
            nodes = self._step_clean(nodes, prefixes[:, j])
        return nodes

    def _edges(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, edge index) for every allowed (row, token) pair: a CSR gather without a Python loop."""
        start = self._start_ext[nodes]  # -1 (dead) reads the trailing zero entries
        deg = self._degree_ext[nodes]
        total = int(deg.sum())
        rows = torch.repeat_interleave(deg, output_size=total)
        shift = start - (torch.cumsum(deg, 0) - deg)  # edge index = position in the flat list + shift[row]
        pos = torch.arange(total, device=nodes.device) + shift[rows]
        return rows, pos

    def allowed_tokens(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse form of :meth:`allowed_mask`: ``(rows, tokens)`` of every allowed pair."""
        nodes = nodes.to(self.device, torch.long)
        rows, pos = self._edges(nodes)
        return rows, self.child_tokens[pos]

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """``[B, vocab_size]`` bool: the tokens allowed after each state (none for ``-1``)."""
        if vocab_size < self.key_base:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the trie's largest token + 1 ({self.key_base})")
        nodes = nodes.to(self.device, torch.long)
        mask = torch.zeros(nodes.shape[0], vocab_size, dtype=torch.bool, device=self.device)
        rows, toks = self.allowed_tokens(nodes)
        mask[rows, toks] = True
        return mask

    def items_at(self, nodes: torch.Tensor) -> torch.Tensor:
        """The item index whose ID ends at each state (0 for non-leaf and dead states)."""
        nodes = nodes.to(self.device, torch.long)
        return torch.where(nodes >= 0, self.leaf_item[nodes.clamp(min=0)], 0)

    @property
    def subtree_items(self) -> torch.Tensor:
        """``[n_nodes]``: how many items' IDs pass through each node (their leaves below it)."""
        cached = self.__dict__.get("_subtree_items")
        if cached is None:
            cached = torch.zeros(self.n_nodes, dtype=torch.long, device=self.device)
            cached.index_add_(0, self.item_leaf, torch.ones_like(self.item_leaf))
            for d in range(int(self.node_depth.max()), 0, -1):  # children before parents
                level = torch.nonzero(self.node_depth == d).squeeze(1)
                cached.index_add_(0, self.node_parent[level], cached[level])
            self.__dict__["_subtree_items"] = cached
        return cached

    @property
    def _leaf_of_item(self) -> torch.Tensor:
        """(CPU) item index -> its leaf node (-1 for no such item); built once, read on every search."""
        cached = self.__dict__.get("_leaf_lookup")
        if cached is None:
            cached = torch.full((int(self.items.max()) + 1 if self.n_items else 1,), DEAD, dtype=torch.long)
            cached[self.items.cpu()] = self.item_leaf.cpu()
            self.__dict__["_leaf_lookup"] = cached
        return cached

    def exclusion_edges(self, exclude: Sequence[Collection[int]]) -> ExcludedEdges:
        """The edges to forbid so that the search for prompt ``p`` can reach no item of
        ``exclude[p]``: those into the highest nodes whose every item is excluded (an excluded
        item's own leaf, reached by its EOS, or a shared prefix all of whose items are excluded).
        Every other prefix still leads to an allowed item, so no beam is spent on an excluded
        one and none gets stuck. Unknown item ids are ignored."""
        n_slots = self.n_nodes + 1
        lookup = self._leaf_of_item
        counts = self.subtree_items.cpu()
        parent, token = self.node_parent.cpu(), self.node_token.cpu()
        keys, tokens = [], []
        for p, items in enumerate(exclude):
            ids = torch.tensor(sorted({int(i) for i in items if 0 < int(i) < lookup.shape[0]}), dtype=torch.long)
            cur = lookup[ids]
            cur = cur[cur >= 0]
            chain = []
            while cur.numel():  # the leaves and all their ancestors below the root (node 0)
                chain.append(cur)
                cur = parent[cur]
                cur = cur[cur > 0]
            if not chain:
                continue
            nodes, hits = torch.unique(torch.cat(chain), return_counts=True)  # hits: excluded items below
            full = nodes[hits == counts[nodes]]
            top = full[~torch.isin(parent[full], full)]
            keys.append(p * n_slots + parent[top])
            tokens.append(token[top])
        if not keys:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return ExcludedEdges(empty, empty, len(exclude))
        keys_t, tokens_t = torch.cat(keys), torch.cat(tokens)
        order = torch.argsort(keys_t, stable=True)
        return ExcludedEdges(keys_t[order].to(self.device), tokens_t[order].to(self.device), len(exclude))

    def mask_excluded(self, scores: torch.Tensor, nodes: torch.Tensor, excluded: ExcludedEdges) -> torch.Tensor:
        """``scores`` (``[rows, V]``, rows = prompts x beams) with the excluded edges of each row's
        prompt at its state ``nodes`` set to ``-inf``, in place."""
        rows = scores.shape[0]
        if excluded.keys.numel() == 0 or rows == 0:
            return scores
        if rows % excluded.n_prompts:
            raise ValueError(f"{rows} rows are not a whole number of beams for {excluded.n_prompts} prompts")
        keys, toks = excluded.keys.to(scores.device), excluded.tokens.to(scores.device)
        prompt = torch.arange(rows, device=scores.device) // (rows // excluded.n_prompts)
        query = prompt * (self.n_nodes + 1) + nodes.to(scores.device, torch.long)  # dead (-1) matches no key
        lo = torch.searchsorted(keys, query)
        cnt = torch.searchsorted(keys, query, right=True) - lo
        total = int(cnt.sum())
        if total:
            row = torch.repeat_interleave(torch.arange(rows, device=scores.device), cnt, output_size=total)
            pos = torch.arange(total, device=scores.device) + (lo - (torch.cumsum(cnt, 0) - cnt))[row]
            scores[row, toks[pos]] = -torch.inf
        return scores

    def excluded_pairs(self, prompts: torch.Tensor, nodes: torch.Tensor, tokens: torch.Tensor,
                       excluded: ExcludedEdges) -> torch.Tensor:
        """Sparse form of :meth:`mask_excluded`: for each (prompt, state, token) triple, whether that
        edge is excluded for that prompt (a bool tensor shaped like ``tokens``)."""
        if excluded.keys.numel() == 0 or tokens.numel() == 0:
            return torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        dev = tokens.device
        pair = excluded.keys.to(dev) * self.key_base + excluded.tokens.to(dev)
        pair = torch.sort(pair).values
        query = (prompts.to(dev) * (self.n_nodes + 1) + nodes.to(dev, torch.long)) * self.key_base + tokens
        idx = torch.searchsorted(pair, query).clamp(max=pair.numel() - 1)
        return (pair[idx] == query) & (nodes.to(dev) >= 0)

    def heavy_masks(
        self, vocab_size: int, dtype: torch.dtype = torch.float32, *, min_degree: int | None = None,
        max_bytes: int = 64 << 20,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(nodes, masks, index)``: the states with more than ``min_degree`` allowed tokens (default
        ``max(64, vocab_size / 16)``: the root and a few wide nodes), sorted, and their dense
        additive masks ``[H, vocab_size]`` (0 allowed, -inf not), at most ``max_bytes`` of them
        (widest first), and ``index[node]``: the node's row in ``masks`` or -1 (``index[-1]`` is
        -1, for the dead state). Built once per (device, dtype, vocab size) and cached."""
        key = (self.device, dtype, int(vocab_size))
        if key not in self._heavy:
            threshold = max(64, vocab_size // 16) if min_degree is None else int(min_degree)
            cand = torch.nonzero(self.degree > threshold).squeeze(1)
            cap = max(1, max_bytes // (vocab_size * torch.finfo(dtype).bits // 8))
            if cand.numel() > cap:
                cand = cand[torch.topk(self.degree[cand], cap).indices]
            nodes = torch.sort(cand).values
            masks = torch.full((nodes.shape[0], vocab_size), -torch.inf, dtype=dtype, device=self.device)
            rows, toks = self.allowed_tokens(nodes)
            masks[rows, toks] = 0
            index = torch.full((self.n_nodes + 1,), -1, dtype=torch.long, device=self.device)
            index[nodes] = torch.arange(nodes.shape[0], device=self.device)
            self._heavy[key] = (nodes, masks, index)
        return self._heavy[key]

    def mask_scores(self, scores: torch.Tensor, nodes: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """``scores`` (``[B, V]``) with ``-inf`` wherever a token is not allowed at ``nodes[b]``.

        Allowed entries keep their exact value (as ``scores + mask`` with a 0 / -inf mask, which
        is what ``prefix_allowed_tokens_fn`` does). No dense mask is built from Python lists:

        - rows at ordinary states: the output is filled with -inf once and only the allowed
          entries are gathered from ``scores`` and scattered back (CSR gather, sparse);
        - rows at "heavy" states (many children, e.g. every beam at the root on the first step)
          add that state's cached dense 0 / -inf row (:meth:`heavy_masks`), broadcast when all
          rows share it.

        ``inplace=True`` writes into ``scores`` (contiguous) instead of a new tensor.
        """
        b, v = scores.shape
        if v < self.key_base:
            raise ValueError(f"scores have {v} columns, fewer than the trie's largest token + 1 ({self.key_base})")
        trie = self.to(scores.device)
        nodes = nodes.to(scores.device, torch.long)
        inplace = inplace and scores.is_contiguous()
        hnodes, hmasks, hindex = trie.heavy_masks(v, scores.dtype)
        if hnodes.numel():
            hidx = hindex[nodes]
            heavy = hidx >= 0
            n_heavy = int(heavy.sum())
        else:
            n_heavy = 0
        if n_heavy == 0:  # sparse
            rows, pos = trie._edges(nodes)
            flat = torch.add(trie.child_tokens[pos], rows, alpha=v)
            kept = scores.reshape(-1)[flat]
            out = scores.fill_(-torch.inf) if inplace else torch.full_like(scores, -torch.inf)
            out.view(-1)[flat] = kept
            return out
        if n_heavy == b:  # dense, one cached row per heavy state
            first = hidx[:1]
            if bool((hidx == first).all()):
                add = hmasks[first]  # [1, V], broadcast
            else:
                add = hmasks[hidx]
            return scores.add_(add) if inplace else scores + add
        hrows = torch.nonzero(heavy).squeeze(1)
        lrows = torch.nonzero(~heavy).squeeze(1)
        heavy_vals = scores[hrows] + hmasks[hidx[hrows]]
        rows, pos = trie._edges(nodes[lrows])
        flat = torch.add(trie.child_tokens[pos], lrows[rows], alpha=v)
        kept = scores.reshape(-1)[flat]
        out = scores.fill_(-torch.inf) if inplace else torch.full_like(scores, -torch.inf)
        out.view(-1)[flat] = kept
        out[hrows] = heavy_vals
        return out
