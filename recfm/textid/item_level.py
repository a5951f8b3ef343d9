"""The item-level textual-ID recommender (``textid.formulation: items``).

Each history item is one position: the mean of its ID's word embeddings plus a position embedding.
A causal transformer reads the items (as SASRec does), and from every position's state a small GRU
decoder writes the next item's textual ID word by word. Every next-item prediction of a training
sequence is trained in one pass, with the trie-restricted loss (:mod:`recfm.textid.trie_loss`), and
recommendation is beam search over the same prefix trie, so only real items come out.

Words are the vocabulary: an ID ``"ultra hydrating lip balm"`` is four tokens and EOS. The vocabulary
holds the words of the catalog's IDs only (no interaction data reaches it).

    net = ItemLevelNet(ItemLevelConfig(), vocab_size=len(vocab), max_len=50)
    rec = ItemLevelRecommender(net, vocab, ids, max_len=50, num_beams=20)
    top = rec.recommend(histories, k=10)          # the Recommender seam: TopK of item indices
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Callable, Collection, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from recfm.compute import FastDropout, eval_mode, fast_dropout
from recfm.models.batching import pad_rows
from recfm.data.windows import pad_right
from recfm.recommender import TopK
from recfm.textid.ids import normalize_id
from recfm.textid.recommender import ItemIdTable, train_on_windows
from recfm.textid.trie import TokenTrie
from recfm.textid.trie_loss import CopyBonus, free_positions, prefix_states, segment_logsumexp, trie_log_probs

PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIAL = ["<pad>", "</s>", "<s>", "<unk>"]
WEIGHTS_FILE = "model.safetensors"
META_FILE = "recfm-textid.json"


def free_row_mask(word_rows: str, vocab_size: int) -> torch.Tensor:
    """``[vocab_size, 1]``: 1 for the rows that keep a learned free embedding under ``items.word_rows``
    (every row for ``encoder+free``, the special tokens only for ``encoder``), 0 elsewhere."""
    mask = torch.zeros(vocab_size, 1)
    mask[: vocab_size if word_rows == "encoder+free" else len(SPECIAL)] = 1.0
    return mask


class ItemLevelConfig(BaseModel):
    """Sizes of the item-level model (``textid.items``); training fields (``rec_lr``, ``batch_size``,
    ``rec_epochs``, ``patience``, ``max_history``) are the textid config's own."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(256, ge=8, description="width of the item embeddings and the transformer over items")
    num_layers: int = Field(2, ge=1, description="causal transformer blocks over the history items")
    num_heads: int = Field(2, ge=1, description="attention heads (must divide hidden_size)")
    dropout: float = Field(0.4, ge=0, lt=1, description="dropout of the item embeddings and the transformer")
    word_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the word embedding table during training, a "
                                "fresh mask each time the table is read (history pooling, item head, decoder words): "
                                "the textual-ID form of SASRec's item-table dropout (baselines `item_dropout`)")
    item_rows: bool = Field(False, description="each item also gets a free embedding row of its own, added to the mean "
                            "of its ID words wherever items are inputs (history positions, the auxiliary item head): "
                            "SASRec's item table beside the words, so items that share most words can still be told "
                            "apart. The IDs the decoder writes are unchanged. An unseen catalog's items (zero-shot) "
                            "get zero rows")
    copy_items: int = Field(0, ge=0, description="a copy mechanism: when the decoder writes a word that is in the ID of "
                            "one of the last copy_items history items, its logit gets a learned bonus (one weight per "
                            "recency). It does not depend on which word it is, so it carries over to an unseen catalog "
                            "(zero-shot); 0 = off")
    decoder_size: int = Field(128, ge=8, description="width of the GRU that writes the next ID word by word")
    decoder_dropout: float = Field(0.2, ge=0, lt=1, description="dropout on the decoder's outputs")
    scale_items: bool = Field(True, description="multiply the pooled item vectors by sqrt(hidden_size) before adding "
                              "positions (as the Transformer and SASRec's original code scale embeddings): a mean of "
                              "word embeddings is small, and unscaled the positions drown it out")
    tie_words: bool = Field(True, description="the decoder's word embeddings (input and output) are the history "
                            "side's, projected to decoder_size: a word learns one meaning, read and written (as "
                            "SASRec ties its input and output item embeddings)")
    item_loss_weight: float = Field(0.0, ge=0, description="weight of an auxiliary SASRec-style loss during "
                                    "training: a softmax over every catalog item, each item's output vector being "
                                    "its pooled ID words (no per-item parameter), so the transformer over items "
                                    "gets the whole-item signal SASRec learns from; 0 is off. Recommendation is "
                                    "still beam search over the IDs")
    item_loss_negatives: int = Field(1024, ge=0, description="items.item_loss_weight's softmax is over the target "
                                     "and this many uniformly drawn items shared by the batch (one matmul); 0: over "
                                     "the whole catalog (exact, about 3x the epoch time on Beauty)")
    rerank_weights: list[float] = Field([0.0], min_length=1, description="after training, each weight w is tried "
                                        "on the validation cases and the best kept (items.rerank_weight): the beam's "
                                        "candidates are re-ordered by their ID log-probability + w x the item head's "
                                        "log-probability (the auxiliary softmax over the whole catalog); [0.0] = "
                                        "beam search alone")
    rerank_weight: float = Field(0.0, ge=0, description="the weight in use (chosen on validation from "
                                 "items.rerank_weights by training; 0 = the ID log-probability alone)")
    unseen_words: Literal["mean", "encoder"] = Field("mean", description="zero-shot only: how words of an "
                                                     "unseen catalog's IDs that training never saw get their "
                                                     "rows. mean: the mean trained row (they carry no meaning); "
                                                     "encoder: a ridge map from a frozen text encoder's vector "
                                                     "of each word (items.word_encoder) to its trained rows, "
                                                     "fitted on the training words (recfm.textid.word_transfer)")
    word_encoder: str = Field("all-minilm-l6-v2", description="the text encoder of items.word_rows and "
                              "items.unseen_words: encoder (an alias, folder or hub name for recfm.models.load_encoder)")
    word_rows: Literal["free", "encoder", "encoder+free"] = Field(
        "free", description="what a word's embedding is. free: a learned row per word; encoder: a learned linear "
        "map of the word's frozen items.word_encoder vector (text-grounded: a word training never saw gets a row "
        "in the same space, so zero-shot transfer can use what it means; special tokens keep free rows); "
        "encoder+free: the sum of both")


class WordVocab:
    """Word-level vocabulary of textual IDs: the special tokens, then the IDs' words, sorted."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def of_ids(cls, ids: Sequence[str]) -> "WordVocab":
        found = sorted({w for x in ids for w in normalize_id(x).split()} - set(SPECIAL))
        return cls(SPECIAL + found)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in normalize_id(text).split()]

    def extended(self, ids: Sequence[str]) -> "WordVocab":
        """This vocabulary followed by the words of ``ids`` it lacks (sorted), so that every word
        keeps its index."""
        new = sorted({w for x in ids for w in normalize_id(x).split()} - set(self.index))
        return WordVocab(self.words + new)

    def table(self, ids: Sequence[str]) -> ItemIdTable:
        """The catalog's IDs as word tokens and their trie (``ids[i]`` is item ``i + 1``)."""
        tokens = [self.encode(x) for x in ids]
        trie = TokenTrie.from_sequences(tokens, EOS, pad_token_id=PAD)
        return ItemIdTable([""] + [normalize_id(x) for x in ids], [[], *tokens], trie)


def recent_items(items: torch.Tensor, last: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]``: the items at positions ``last``, ``last - 1``, ... of right-padded ``items`` ``[B, T]``
    (0 before the first)."""
    at = last[:, None] - torch.arange(k, device=items.device)[None]
    return torch.where(at >= 0, items.gather(1, at.clamp(min=0)), torch.zeros_like(at))


def recent_items_everywhere(items: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, T, k]``: for every position t of ``items`` ``[B, T]``, the items at t, t - 1, ... (0 before the first)."""
    padded = nn.functional.pad(items, (k - 1, 0))
    t = items.shape[1]
    return torch.stack([padded[:, k - 1 - j : k - 1 - j + t] for j in range(k)], dim=-1)


def word_vectors(vocab: WordVocab, encoder: str) -> torch.Tensor:
    """``[len(vocab), e]``: each word's vector from the frozen text encoder ``encoder`` (zeros for the
    special tokens), what ``items.word_rows: encoder`` maps to word embeddings."""
    from recfm.textid import word_transfer

    text = word_transfer.encoder_embedder(encoder)(list(vocab.words[len(SPECIAL):]))
    return torch.cat([torch.zeros(len(SPECIAL), text.shape[1]), text.float()])


class ItemLevelNet(nn.Module):
    def __init__(self, config: ItemLevelConfig, vocab_size: int, max_len: int,
                 word_vectors: torch.Tensor | None = None, n_items: int | None = None):
        """``word_vectors`` ``[vocab_size, e]``: each word's frozen text-encoder vector (zeros for the
        special tokens), needed when ``config.word_rows`` is not ``free``; ``n_items``: the catalog's
        size, needed with ``config.item_rows``."""
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"items.num_heads={config.num_heads} must divide items.hidden_size={config.hidden_size}")
        d, dd = config.hidden_size, config.decoder_size
        self.word_emb = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.word_rows_kind = config.word_rows
        self.grounded = config.word_rows != "free"
        if self.grounded:
            if word_vectors is None or word_vectors.shape[0] != vocab_size:
                raise ValueError(f"items.word_rows={config.word_rows} needs one text vector per word ({vocab_size})")
            self.register_buffer("word_text", word_vectors.float().clone())
            # bias-free, so that the padding word (a zero vector) keeps a zero row
            self.word_proj = nn.Linear(word_vectors.shape[1], d, bias=False)
            self.register_buffer("free_rows", free_row_mask(config.word_rows, vocab_size))
        self.item_rows = config.item_rows
        if config.item_rows:
            if n_items is None:
                raise ValueError("items.item_rows needs the catalog's size (n_items)")
            self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=PAD)  # item indices are 1-based
        self.pos_emb = nn.Embedding(max_len, d)
        self.drop = FastDropout(config.dropout)
        self.word_dropout = config.word_dropout
        block = nn.TransformerEncoderLayer(d, config.num_heads, 4 * d, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, config.num_layers, enable_nested_tensor=False)
        for layer in self.blocks.layers:  # torch.bernoulli masks were a sixth of a CPU step (recfm.compute)
            layer.dropout, layer.dropout1, layer.dropout2 = (FastDropout(config.dropout) for _ in range(3))
        self.ln = nn.LayerNorm(d)
        self.dec_init = nn.Linear(d, dd)
        self.dec_context = nn.Linear(d, dd)
        self.tie_words = config.tie_words
        self.item_scale = math.sqrt(d) if config.scale_items else 1.0
        self.item_loss_weight = config.item_loss_weight
        self.item_loss_negatives = config.item_loss_negatives
        self.rerank_weight = config.rerank_weight
        self.unseen_words, self.word_encoder = config.unseen_words, config.word_encoder
        if config.tie_words:
            self.dec_proj = nn.Linear(d, dd, bias=False)
        else:
            self.dec_emb = nn.Embedding(vocab_size, dd, padding_idx=PAD)  # tied with the output layer
        self.gru = nn.GRU(2 * dd, dd, batch_first=True)
        self.dec_drop = FastDropout(config.decoder_dropout)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        self.copy_items = config.copy_items
        if config.copy_items:
            self.copy_weight = nn.Parameter(torch.zeros(config.copy_items))
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                with torch.no_grad():
                    m.weight[PAD].zero_()

    def item_vectors(self, items: torch.Tensor, id_tokens: torch.Tensor, rows: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """``[B, T]`` item indices -> ``[B, T, d]``: the mean word embedding of each item's ID, plus the
        item's own row with ``items.item_rows`` (``rows``: :meth:`word_rows`, when the caller already has them)."""
        tokens = id_tokens[items]
        # One fused gather-and-mean (padding words excluded from sum and count, an empty ID gives zeros):
        # gathering [B, T, words, d] and summing it was a fifth of a CPU training step.
        pooled = nn.functional.embedding_bag(tokens.reshape(-1, tokens.shape[-1]), self.word_table(rows),
                                             mode="mean", padding_idx=PAD)
        pooled = pooled.reshape(*tokens.shape[:-1], -1)
        return pooled + self.item_emb(items) if self.item_rows else pooled

    def encode(self, items: torch.Tensor, id_tokens: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded ``[B, T]`` histories -> ``[B, T, d]`` causal states (position t sees items 0..t)."""
        t = items.shape[1]
        x = self.item_vectors(items, id_tokens, rows) * self.item_scale + self.pos_emb(torch.arange(t, device=items.device))
        x = self.drop(x)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=items.device)
        x = self.blocks(x, mask=causal, is_causal=True)
        return self.ln(x)

    def decoder_start(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[M, d]`` states -> the GRU's initial hidden state ``[1, M, dd]`` and the context ``[M, dd]``
        fed beside every input word."""
        return torch.tanh(self.dec_init(states))[None], self.dec_context(states)

    def word_rows(self) -> torch.Tensor:
        """``[V, d]``: every word's embedding (``items.word_rows``), without dropout."""
        if not self.grounded:
            return self.word_emb.weight
        return self.word_emb.weight * self.free_rows + self.word_proj(self.word_text)

    def word_table(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[V, d]``: the word embeddings, with ``word_dropout`` in training (a fresh mask each read; the
        padding row stays zero)."""
        return fast_dropout(self.word_rows() if rows is None else rows, self.word_dropout, self.training)

    def decoder_words(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[V, dd]``: the decoder's word embeddings, read as inputs and scored as outputs."""
        return self.dec_proj(self.word_table(rows)) if self.tie_words else self.dec_emb.weight

    def decode(self, states: torch.Tensor, previous: torch.Tensor, words: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: ``previous`` ``[M, L]`` (BOS, then the ID's words) -> outputs ``[M, L, dd]``."""
        words = self.decoder_words() if words is None else words
        h0, context = self.decoder_start(states)
        x = torch.cat([words[previous], context[:, None].expand(-1, previous.shape[1], -1)], dim=-1)
        out, _ = self.gru(x, h0)
        return self.dec_drop(out)

    def decode_step(self, h: torch.Tensor, context: torch.Tensor, previous: torch.Tensor, words: torch.Tensor):
        out, h = self.gru(torch.cat([words[previous], context], dim=-1)[:, None], h)
        return out[:, 0], h


class ItemLevelRecommender:
    """An :class:`ItemLevelNet`, the word vocabulary and the catalog's IDs, behind ``recommend``."""

    def __init__(self, model: ItemLevelNet, vocab: WordVocab, ids: Sequence[str], *, max_len: int = 50,
                 num_beams: int = 20, eval_batch_size: int = 128, loss: str = "trie"):
        self.model = model
        self.vocab = vocab
        self.max_len = max_len
        self.num_beams = num_beams
        self.eval_batch_size = eval_batch_size
        self.loss_kind = loss
        self.items = vocab.table(ids)

    @property
    def items(self) -> ItemIdTable:
        return self._items

    @items.setter
    def items(self, table: ItemIdTable) -> None:
        self._items = table
        self.id_tokens = pad_rows(table.tokens, PAD)
        self.targets = pad_rows([t + [EOS] for t in table.tokens], PAD)  # what the decoder writes per item

    @property
    def n_items(self) -> int:
        return self.items.n_items

    @property
    def device(self) -> torch.device:
        return self.model.out_bias.device

    @property
    def search_beam(self) -> int:
        """Every request up to this many items is answered by the same search (``num_beams``)."""
        return self.num_beams

    # -- training ----------------------------------------------------------------------------
    def loss(self, windows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean loss over the ID tokens of every next item of ``windows`` (``[B, max_len + 1]``,
        right-padded) and the number of tokens it averages (positions with a choice, for ``trie``)."""
        dev = self.device
        windows = windows.to(dev)
        inputs, labels = windows[:, :-1], windows[:, 1:]
        mask = labels > 0
        rows = self.model.word_rows()  # once a step: with word_rows: encoder they are a product over the vocabulary
        states = self.model.encode(inputs, self.id_tokens.to(dev), rows)[mask]
        targets = self.targets.to(dev)[labels[mask]]  # [M, L]: the next items' words and EOS
        previous = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
        words = self.model.decoder_words(rows)
        out = self.model.decode(states, previous, words)
        valid = targets != PAD
        copy = self._copy_bonus(recent_items_everywhere(inputs, self.model.copy_items)[mask]) \
            if self.model.copy_items else None
        if self.loss_kind == "full":
            logits = out[valid] @ words.T + self.model.out_bias
            if copy is not None:
                logits = logits + copy.rows(torch.nonzero(valid)[:, 0]).dense(torch.arange(len(words), device=dev),
                                                                               len(words))
            loss, tokens = nn.functional.cross_entropy(logits, targets[valid]), int(valid.sum())
        else:
            trie = self.items.trie.to(dev)
            nodes = prefix_states(trie, targets)
            free = free_positions(trie, nodes, valid)
            lp = trie_log_probs(out[free], nodes[free], targets[free], words, self.model.out_bias, trie,
                                copy.rows(torch.nonzero(free)[:, 0]) if copy is not None else None)
            loss, tokens = -lp.mean(), int(free.sum())
        if self.model.item_loss_weight:
            loss = loss + self.model.item_loss_weight * self.item_loss(states, labels[mask], rows=rows)
        return loss, tokens

    def _copy_bonus(self, recent: torch.Tensor) -> CopyBonus:
        """The copy mechanism (``items.copy_items``) for rows whose recent history items are ``recent`` ``[M, k]``."""
        return CopyBonus(self.id_tokens.to(recent.device)[recent], self.model.copy_weight, len(SPECIAL))

    def item_loss(self, states: torch.Tensor, next_items: torch.Tensor,
                  negatives: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The auxiliary ``items.item_loss_weight`` term: cross-entropy of ``next_items`` ``[M]`` scored
        by the dot product of each state with the items' input vectors, over the whole catalog
        (``items.item_loss_negatives: 0``) or over the target and ``negatives`` (1-based item
        indices shared by the batch; drawn uniformly when None; one equal to a row's target is
        masked out of that row)."""
        dev, id_tokens = states.device, self.id_tokens.to(states.device)
        if negatives is None and not self.model.item_loss_negatives:
            return nn.functional.cross_entropy(states @ self._catalog_vectors(dev, rows).T, next_items - 1)
        if negatives is None:
            negatives = torch.randint(1, self.n_items + 1, (self.model.item_loss_negatives,), device=dev)
        vectors = self.model.item_vectors(torch.cat([next_items, negatives]), id_tokens, rows) * self.model.item_scale
        positive = (states * vectors[: len(next_items)]).sum(-1, keepdim=True)
        drawn = (states @ vectors[len(next_items) :].T).masked_fill(negatives[None] == next_items[:, None], -torch.inf)
        logits = torch.cat([positive, drawn], dim=1)
        return (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean()

    def train_epoch(self, windows: np.ndarray, batch_size: int, rng: np.random.Generator,
                    optimizer: torch.optim.Optimizer, *, stop: Callable[[], bool] = lambda: False,
                    progress: Callable | None = None, autocast: torch.dtype | None = None,
                    after_step: Callable[[], None] | None = None) -> tuple[float, int]:
        """One pass over the training windows (:func:`~recfm.textid.recommender.train_on_windows`)."""
        return train_on_windows(self.model, self.loss, windows, batch_size, rng, optimizer, stop=stop, progress=progress,
                                autocast=autocast, after_step=after_step)

    # -- the seam ----------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[int]], k: int,
                  exclude: Sequence[Collection[int]] | None = None) -> TopK:
        """Top-k items by beam search over the ID trie with the fixed beam ``search_beam`` (a k above it
        is searched with a beam of k). Scores are log-probabilities of the whole ID."""
        items = np.zeros((len(histories), k), dtype=np.int64)
        scores = np.full((len(histories), k), -np.inf, dtype=np.float32)
        lengths = np.array([min(len(h), self.max_len) for h in histories])
        order = np.argsort(lengths, kind="stable")
        with eval_mode(self.model):
            for lo in range(0, len(order), self.eval_batch_size):
                rows = order[lo : lo + self.eval_batch_size]
                ex = [exclude[i] for i in rows] if exclude is not None else None
                top_items, top_scores = self._search([histories[i] for i in rows], k, max(k, self.search_beam), ex)
                items[rows], scores[rows] = top_items, top_scores
        return TopK(items=items, scores=scores)

    def _search(self, histories, k: int, beam: int, exclude) -> tuple[np.ndarray, np.ndarray]:
        """Beam search over the trie with logits computed only for the allowed tokens: a dense
        product at the root (one live beam per history, every first word allowed), a sparse gather
        below it. Candidates of a history's beams compete for its ``beam`` slots (a segmented top-k)."""
        dev, net, trie = self.device, self.model, self.items.trie.to(self.device)
        rows = net.word_rows()
        weight, bias = net.decoder_words(rows), net.out_bias
        seqs, last = pad_right(histories, self.max_len)
        seqs, last = seqs.to(dev), last.to(dev)
        b = seqs.shape[0]
        states = net.encode(seqs, self.id_tokens.to(dev), rows)[torch.arange(b, device=dev), last]
        copy = self._copy_bonus(recent_items(seqs, last, net.copy_items).repeat_interleave(beam, 0)) \
            if net.copy_items else None
        h, context = net.decoder_start(states.repeat_interleave(beam, 0))
        score = torch.full((b * beam,), -torch.inf, device=dev)
        score[::beam] = 0.0  # one live beam per history at the start
        nodes = trie.root(b * beam)
        previous = torch.full((b * beam,), BOS, dtype=torch.long, device=dev)
        excluded = trie.exclusion_edges(exclude) if exclude is not None else None
        first = trie.child_tokens[trie.offsets[0] : trie.offsets[1]]
        for _ in range(int(trie.node_depth.max()) + 1):
            done = trie.items_at(nodes) > 0
            live = torch.isfinite(score) & ~done
            if not bool(live.any()):
                break
            out, h = net.decode_step(h, context, previous, weight)
            rows, toks, lp = [], [], []
            at_root = torch.nonzero(live & (nodes == 0)).squeeze(1)
            if at_root.numel():
                root_logits = out[at_root] @ weight[first].T + bias[first]
                if copy is not None:
                    root_logits = root_logits + copy.rows(at_root).dense(first, len(weight))
                root_lp = torch.log_softmax(root_logits, dim=-1)
                rows.append(at_root.repeat_interleave(first.numel()))
                toks.append(first.repeat(at_root.numel()))
                lp.append(root_lp.reshape(-1))
            below = torch.nonzero(live & (nodes > 0)).squeeze(1)
            if below.numel():
                r, t = trie.allowed_tokens(nodes[below])
                r = below[r]
                logit = (out[r] * weight[t]).sum(-1) + bias[t]
                if copy is not None:
                    logit = logit + copy.pairs(r, t)
                rows.append(r)
                toks.append(t)
                lp.append(logit - segment_logsumexp(logit, r, b * beam)[r])
            finished = torch.nonzero(done & torch.isfinite(score)).squeeze(1)
            rows.append(finished)  # a finished ID keeps its score, padded
            toks.append(torch.full_like(finished, PAD))
            lp.append(torch.zeros(finished.numel(), device=dev))
            rows_t, toks_t = torch.cat(rows), torch.cat(toks)
            total = score[rows_t] + torch.cat(lp)
            if excluded is not None:
                total[trie.excluded_pairs(rows_t // beam, nodes[rows_t], toks_t, excluded)] = -torch.inf
            # segmented top-k: candidates sorted by score, then (stably) by history
            order = torch.argsort(total, descending=True, stable=True)
            order = order[torch.argsort(rows_t[order] // beam, stable=True)]
            hist = rows_t[order] // beam
            counts = torch.bincount(hist, minlength=b)
            rank = torch.arange(order.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[hist]
            keep = rank < beam
            slot = hist[keep] * beam + rank[keep]
            parent = torch.arange(b * beam, device=dev)  # empty slots: dead beams
            token = torch.full((b * beam,), PAD, dtype=torch.long, device=dev)
            score = torch.full((b * beam,), -torch.inf, device=dev)
            parent[slot], token[slot], score[slot] = rows_t[order[keep]], toks_t[order[keep]], total[order[keep]]
            nodes = torch.where(torch.isfinite(score), trie.step(nodes[parent], token), torch.full_like(nodes, -1))
            h, context, previous = h[:, parent], context[parent], token
        score = score.view(b, beam)
        found = torch.where(torch.isfinite(score), trie.items_at(nodes).view(b, beam), 0)
        if net.rerank_weight:
            score = score + net.rerank_weight * self._item_head_log_probs(states, found)
        # beams finish at different steps: order each history's items by their final score
        score, pos = torch.sort(score, dim=1, descending=True, stable=True)
        found = found.gather(1, pos)
        return found[:, :k].cpu().numpy(), score[:, :k].cpu().numpy()

    def _catalog_vectors(self, device: torch.device, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_items, d]``: every catalog item's output vector in the item head (its pooled ID words, scaled)."""
        catalog = torch.arange(1, self.n_items + 1, device=device)
        return self.model.item_vectors(catalog, self.id_tokens.to(device), rows) * self.model.item_scale

    def _item_head_log_probs(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: the log-probability of ``items`` (``[B, K]``, 0 = none) under the auxiliary item
        softmax over the whole catalog after each history's ``states`` ``[B, d]`` (0 for item 0)."""
        logits = states @ self._catalog_vectors(states.device).T
        lp = logits.gather(1, (items - 1).clamp(min=0)) - torch.logsumexp(logits, dim=1, keepdim=True)
        return torch.where(items > 0, lp, torch.zeros_like(lp))

    @torch.no_grad()
    def item_log_probs(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[B, n_items + 1]``: every item's constrained ID log-probability after each history, by
        teacher forcing each item's whole ID (column 0, padding, is -inf). The slow reference that beam
        search is tested against: a beam at least as wide as the catalog returns exactly its top k."""
        with eval_mode(self.model):
            dev, trie = self.device, self.items.trie.to(self.device)
            seqs, last = pad_right(histories, self.max_len)
            seqs, last = seqs.to(dev), last.to(dev)
            rows = self.model.word_rows()
            states = self.model.encode(seqs, self.id_tokens.to(dev), rows)[torch.arange(len(histories), device=dev), last]
            targets = self.targets[1:].to(dev)
            n = targets.shape[0]
            out = torch.full((len(histories), n + 1), -torch.inf, device=dev)
            nodes = prefix_states(trie, targets)
            free = free_positions(trie, nodes, targets != PAD)
            previous = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
            words = self.model.decoder_words(rows)
            recent = recent_items(seqs, last, self.model.copy_items) if self.model.copy_items else None
            n_free = int(free.sum())
            for b in range(len(histories)):
                dec = self.model.decode(states[b].expand(n, -1), previous, words)
                copy = self._copy_bonus(recent[b].expand(n_free, -1)) if recent is not None else None
                lp = torch.zeros(targets.shape, device=dev)
                lp[free] = trie_log_probs(dec[free], nodes[free], targets[free], words, self.model.out_bias, trie, copy)
                out[b, 1:] = lp.sum(1)
        return out

    # -- zero-shot ---------------------------------------------------------------------------
    def for_catalog(self, ids: Sequence[str], embed_words: Callable[[list[str]], torch.Tensor] | None = None
                    ) -> "ItemLevelRecommender":
        """The same trained model over another catalog's textual IDs (zero-shot transfer). Words the
        training catalog never had are appended to the vocabulary. With ``items.unseen_words: mean``
        they get the mean trained word embedding and output bias: no learned meaning, so an item is
        known by the words it shares with the training catalog. With ``encoder`` each new word's rows
        are predicted from a frozen text encoder's vector of the word (``embed_words``, by default
        ``items.word_encoder``) by a ridge map fitted on the trained words. A model trained with
        ``items.word_rows: encoder`` gives every new word its row as in training: the learned map of the
        word's encoder vector. Only the IDs (item metadata) are read; nothing of the new catalog's
        interactions."""
        vocab = self.vocab.extended(ids)
        net = copy.deepcopy(self.model)
        added = len(vocab) - len(self.vocab)
        report: dict = {}
        if added:
            tables = [net.word_emb.weight, net.out_bias[:, None]] + ([] if net.tie_words else [net.dec_emb.weight])
            rows = torch.cat([t.detach() for t in tables], dim=1)  # [V, all columns]
            known = rows[len(SPECIAL):]
            new_words = list(vocab.words[len(self.vocab):])
            embed = embed_words
            if embed is None and (net.unseen_words == "encoder" or net.grounded):  # loaded once for both uses
                from recfm.textid.word_transfer import encoder_embedder

                embed = encoder_embedder(net.word_encoder)
            if net.unseen_words == "encoder":
                from recfm.textid.word_transfer import map_new_rows

                fill, report = map_new_rows(self.vocab.words[len(SPECIAL):], known, new_words, embed)
            else:
                fill = known.mean(0, keepdim=True).expand(added, -1)
            grown = torch.cat([rows, fill])  # map_new_rows answers in the rows' dtype
            parts = grown.split([t.shape[1] for t in tables], dim=1)
            if net.grounded:  # the new words' rows come from what they mean to the encoder, as in training
                net.word_text = torch.cat([net.word_text, embed(new_words).to(net.word_text)])
                net.free_rows = free_row_mask(net.word_rows_kind, len(vocab)).to(net.free_rows)
            with torch.no_grad():
                net.word_emb = nn.Embedding.from_pretrained(parts[0].contiguous(), freeze=False, padding_idx=PAD)
                net.out_bias = nn.Parameter(parts[1][:, 0].contiguous())
                if not net.tie_words:
                    net.dec_emb = nn.Embedding.from_pretrained(parts[2].contiguous(), freeze=False, padding_idx=PAD)
        if net.item_rows:  # the new catalog's items were never trained: no row of their own
            net.item_emb = nn.Embedding(len(ids) + 1, net.item_emb.embedding_dim, padding_idx=PAD).to(net.out_bias)
            nn.init.zeros_(net.item_emb.weight)
        net.eval()
        other = ItemLevelRecommender(net, vocab, ids, max_len=self.max_len, num_beams=self.num_beams,
                                     eval_batch_size=self.eval_batch_size, loss=self.loss_kind)
        other.new_words = added
        other.word_map_report = report
        return other

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, directory: Path, config: ItemLevelConfig) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(directory / WEIGHTS_FILE))
        meta = {"formulation": "items", "config": config.model_dump(), "words": self.vocab.words,
                "max_len": self.max_len, "num_beams": self.num_beams, "loss": self.loss_kind}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def from_pretrained(cls, directory: Path, ids: Sequence[str], *, eval_batch_size: int = 128,
                        device: str = "cpu") -> "ItemLevelRecommender":
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        vocab = WordVocab(meta["words"])
        state = load_file(str(directory / WEIGHTS_FILE))
        item_rows = state.get("item_emb.weight")
        net = ItemLevelNet(ItemLevelConfig(**meta["config"]), len(vocab), meta["max_len"],
                           word_vectors=state.get("word_text"), n_items=None if item_rows is None else len(item_rows) - 1)
        net.load_state_dict(state)
        net.to(device).eval()
        return cls(net, vocab, ids, max_len=meta["max_len"], num_beams=meta["num_beams"],
                   eval_batch_size=eval_batch_size, loss=meta.get("loss", "trie"))


def is_item_level(directory: Path) -> bool:
    meta = Path(directory) / META_FILE
    return meta.is_file() and json.loads(meta.read_text()).get("formulation") == "items"
