"""The base recommender of IDGenRec: a language model that writes the next item's textual ID.

    rec = TextIDRecommender(model, tokenizer, item_ids, builder)
    top = rec.recommend(histories, k=10)          # the Recommender seam: TopK of item indices

Both backbone kinds answer the same calls. A seq2seq model (T5) reads the prompt in its encoder
and writes the ID in its decoder; a decoder-only model (SmolLM2) reads ``prompt`` and continues
with ``ID </s>``. ``batch`` builds the teacher-forcing tensors of either kind, ``loss`` runs them,
optionally with soft ID embeddings swapped in at the history's ID positions (the alternate
training step, see ``recfm.textid.training``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import torch

from recfm.compute import eval_mode
from recfm.models.batching import autocast_context, pad_rows
from recfm.data.windows import epoch_batches
from recfm.recommender import TopK
from recfm.textid.ids import normalize_id
from recfm.textid.prompts import Prompt, PromptBuilder
from recfm.textid.trie import TokenTrie

ITEM_IDS_FILE = "item_ids.tsv"
INITIAL_IDS_FILE = "item_ids.initial.tsv"  # the IDs training started from (the paper's Figure 3: before/after)


def write_id_table(path: Path, item_keys: Sequence[str], ids: Sequence[str]) -> None:
    """The dataset's item id TAB its textual ID, one line an item."""
    if len(item_keys) != len(ids):
        raise ValueError(f"{len(item_keys)} item keys for {len(ids)} IDs")
    Path(path).write_text("".join(f"{k}\t{t}\n" for k, t in zip(item_keys, ids)), encoding="utf-8")


def train_on_windows(model: torch.nn.Module, window_loss: Callable[[torch.Tensor], tuple[torch.Tensor, int]],
                     windows: np.ndarray, batch_size: int, rng: np.random.Generator, optimizer: torch.optim.Optimizer,
                     *, stop: Callable[[], bool] = lambda: False, progress: Callable | None = None,
                     autocast: torch.dtype | None = None, after_step: Callable[[], None] | None = None
                     ) -> tuple[float, int]:
    """One epoch over right-padded item ``windows`` (the recommenders that train on whole sequences:
    item-level and whole-sequence): batches of similar length, ``window_loss(batch) -> (mean loss,
    tokens)`` (its forward pass under ``autocast``, e.g. bf16), gradient clipping at 1. Returns (mean
    token loss, steps). ``after_step()`` runs after every optimizer step (a weight average); ``stop()``
    is read after it (the time budget) and ends the epoch early; the model is left in eval mode."""
    device = next(model.parameters()).device
    model.train()
    lengths = (windows > 0).sum(1)
    batches = epoch_batches(lengths, batch_size, rng, sort_by_length=True)
    total, tokens, steps = 0.0, 0, 0
    try:
        for rows in (progress(batches) if progress else batches):
            batch = torch.from_numpy(windows[rows][:, : max(2, int(lengths[rows].max()))])
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, autocast):
                loss, n = window_loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach()) * n
            tokens += n
            steps += 1
            if stop():
                break
    finally:
        model.eval()
    return total / max(tokens, 1), steps


def id_prefix(tokenizer) -> str:
    """What goes before an ID when tokenizing it on its own so that it matches the ID inside a
    sentence: nothing for SentencePiece-style tokenizers (they mark word starts themselves), a
    space for byte-level BPE (GPT-2 / Llama style, where ' word' and 'word' differ)."""
    first = tokenizer("hello", add_special_tokens=False)["input_ids"][:1]
    piece = tokenizer.convert_ids_to_tokens(first)[0] if first else ""
    return "" if piece.startswith("\u2581") else " "


@dataclass
class ItemIdTable:
    """Textual IDs of a catalog: ``texts[i]`` is item ``i``'s ID (index 0, padding, is ``""``),
    ``tokens[i]`` its tokens (no EOS) and ``trie`` the prefix tree over all of them."""

    texts: list[str]
    tokens: list[list[int]]
    trie: TokenTrie

    @classmethod
    def build(cls, ids: Sequence[str], tokenizer) -> "ItemIdTable":
        """``ids[i]`` is item ``i + 1``'s textual ID (made unique beforehand)."""
        texts = [""] + [normalize_id(x) for x in ids]
        prefix = id_prefix(tokenizer)
        enc = tokenizer([prefix + t for t in texts[1:]], add_special_tokens=False)["input_ids"] if ids else []
        trie = TokenTrie.from_texts(texts[1:], tokenizer, prefix=prefix)
        return cls(texts, [[], *enc], trie)

    @property
    def n_items(self) -> int:
        return len(self.texts) - 1

    def save(self, path: Path, item_keys: Sequence[str]) -> None:
        """``item_ids.tsv``: the dataset's item id TAB its textual ID, one line an item."""
        write_id_table(path, item_keys, self.texts[1:])

    @staticmethod
    def read(path: Path) -> tuple[list[str], list[str]]:
        keys, ids = [], []
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'item_id<TAB>textual id', got {line!r}")
            keys.append(parts[0])
            ids.append(parts[1])
        return keys, ids


class TextIDRecommender:
    """Backbone + tokenizer + item IDs + prompt builder, behind ``recommend``.

    ``user_ids(histories)`` (optional) returns each history's user-ID tokens; it is only ever
    given the history that is the model input, so no target can reach it.
    """

    def __init__(self, model, tokenizer, items: ItemIdTable, builder: PromptBuilder, *, max_history: int = 20,
                 num_beams: int = 20, eval_template: int = 0, eval_batch_size: int = 64,
                 user_ids: Callable[[Sequence[Sequence[int]]], list[list[int]]] | None = None, loss: str = "full"):
        self.model = model
        self.loss_kind = loss  # "trie" (recfm.textid.trie_loss) or "full": softmax over the whole vocabulary
        self.tokenizer = tokenizer
        self.items = items
        self.builder = builder
        self.max_history = max_history
        self.num_beams = num_beams
        self.eval_template = eval_template
        self.eval_batch_size = eval_batch_size
        self.user_ids = user_ids
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.pad = tokenizer.pad_token_id
        self.eos = tokenizer.eos_token_id

    @property
    def n_items(self) -> int:
        return self.items.n_items

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompts and batches ---------------------------------------------------------------
    def window(self, history: Sequence[int]) -> list[int]:
        h = [int(i) for i in history if int(i) > 0]
        return h[-self.max_history :] if self.max_history else h

    def prompts(self, histories: Sequence[Sequence[int]], templates: Sequence[int] | None = None) -> list[Prompt]:
        windows = [self.window(h) for h in histories]
        users = self.user_ids(windows) if (self.user_ids is not None and self.builder.with_user) else [[]] * len(windows)
        templates = templates if templates is not None else [self.eval_template] * len(windows)
        return [self.builder.build(w, self.items.tokens, t, u) for w, t, u in zip(windows, templates, users)]

    def batch(self, prompts: Sequence[Prompt], targets: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forcing tensors. Seq2seq: encoder ``prompt </s>``, labels ``ID </s>``. Decoder-only:
        ``prompt ID </s>`` with labels on the ID part only. Right-padded; ``slot``/``offset`` give,
        per input position, the history index / token position of the ID it belongs to (-1: none)."""
        tgt = [self.items.tokens[int(t)] + [self.eos] for t in targets] if targets is not None else None
        if self.is_seq2seq:
            inputs = [p.tokens + [self.eos] for p in prompts]
            slots = [p.slots + [-1] for p in prompts]
            offsets = [p.offsets + [0] for p in prompts]
            labels = pad_rows(tgt, -100) if tgt is not None else None
        else:
            inputs = [p.tokens + (t if tgt is not None else []) for p, t in zip(prompts, tgt or [[]] * len(prompts))]
            slots = [p.slots + [-1] * (len(x) - len(p.tokens)) for p, x in zip(prompts, inputs)]
            offsets = [p.offsets + [0] * (len(x) - len(p.tokens)) for p, x in zip(prompts, inputs)]
            labels = None
            if tgt is not None:
                labels = pad_rows([[-100] * len(p.tokens) + t for p, t in zip(prompts, tgt)], -100)
        out = {
            "input_ids": pad_rows(inputs, self.pad),
            "attention_mask": pad_rows([[1] * len(x) for x in inputs], 0),
            "slot": pad_rows(slots, -1),
            "offset": pad_rows(offsets, 0),
        }
        if labels is not None:
            out["labels"] = labels
        return out

    def label_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """How many target tokens ``loss`` averages over (a decoder-only model predicts each from the
        position before it, so its first label position has no prediction; the trie loss counts only
        positions where the trie allows more than one token)."""
        labels = batch["labels"] if self.is_seq2seq else batch["labels"][:, 1:]
        if self.loss_kind == "trie":  # the trie loss averages over the positions with a choice only
            from recfm.textid.trie_loss import free_label_count

            return free_label_count(labels, self.items.trie)
        return int(labels.ne(-100).sum())

    def loss(self, batch: dict[str, torch.Tensor], soft_ids: Callable | None = None) -> torch.Tensor:
        """Mean token cross-entropy of the target IDs (over the trie's allowed tokens with ``loss="trie"``,
        averaged over the positions with a choice). ``soft_ids(rows, slots, offsets)`` (optional)
        returns embeddings ``[n, d]`` for the ID positions (``slot >= 0``, row-major), replacing their
        token embeddings."""
        dev = self.device
        ids, mask, labels = batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["labels"].to(dev)
        kwargs: dict = {"attention_mask": mask, "labels": labels}
        if soft_ids is None:
            kwargs["input_ids"] = ids
        else:
            embeds = self.model.get_input_embeddings()(ids)
            slot, offset = batch["slot"].to(dev), batch["offset"].to(dev)
            where = slot >= 0
            if bool(where.any()):
                rows = where.nonzero()[:, 0]  # row-major, the order masked_scatter fills in
                soft = soft_ids(rows, slot[where], offset[where])
                embeds = embeds.masked_scatter(where[..., None], soft.to(embeds.dtype))
            kwargs["inputs_embeds"] = embeds
        if self.loss_kind == "full":
            return self.model(**kwargs).loss
        from recfm.textid.trie_loss import trie_cross_entropy

        del kwargs["labels"]
        trie = self.items.trie.to(dev)
        if self.is_seq2seq:
            kwargs["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            return trie_cross_entropy(self.model(**kwargs).logits, labels, trie)
        return trie_cross_entropy(self.model(**kwargs).logits[:, :-1], labels[:, 1:], trie)

    # -- the seam --------------------------------------------------------------------------
    @property
    def search_beam(self) -> int:
        """The beam every request up to this many items is searched with (``num_beams``, the run's
        ``num_beams`` setting): such answers do not depend on k, the top k of a larger request is
        the answer to a smaller one followed by more items. ``recfm serve`` and ``recfm recommend``
        accept no larger k."""
        return self.num_beams

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[int]], k: int,
                  exclude: Sequence[Collection[int]] | None = None) -> TopK:
        """Top-k items by trie-constrained beam search with the fixed beam ``search_beam``. A k above
        it (an evaluation protocol asking for a longer list than the run's beam) is searched with a
        beam of k, whose top items may then differ from those of the fixed beam."""
        from recfm.textid.constrained import constrained_topk

        items = np.zeros((len(histories), k), dtype=np.int64)
        scores = np.full((len(histories), k), -np.inf, dtype=np.float32)
        # Similar lengths together: less padding in the encoder and in every beam step.
        order = sorted(range(len(histories)), key=lambda i: len(self.window(histories[i])))
        with eval_mode(self.model):
            for s in range(0, len(order), self.eval_batch_size):
                rows = order[s : s + self.eval_batch_size]
                prompts = self.prompts([histories[i] for i in rows])
                # seq2seq: "prompt </s>" right-padded; decoder-only: left-padded, generation continues after it
                tokens = [p.tokens + [self.eos] if self.is_seq2seq else p.tokens for p in prompts]
                left = not self.is_seq2seq
                ids, mask = pad_rows(tokens, self.pad, left=left), pad_rows([[1] * len(t) for t in tokens], 0, left=left)
                ex = [exclude[i] for i in rows] if exclude is not None else None
                # a trie-trained model is decoded with what it was trained on: the log-probability of the
                # whole ID under the trie (renormalised over allowed tokens, summed, no length penalty)
                trie_scores = {"renormalize": True, "length_penalty": 0.0} if self.loss_kind == "trie" else {}
                top_items, top_scores = constrained_topk(
                    self.model, self.tokenizer, self.items.trie, {"input_ids": ids, "attention_mask": mask}, k,
                    num_beams=max(k, self.search_beam), exclude=ex, **trie_scores,
                )
                items[rows] = top_items.numpy()
                scores[rows] = top_scores.numpy()
        return TopK(items=items, scores=scores)

    # -- persistence -----------------------------------------------------------------------
    def save_pretrained(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        meta = {"max_history": self.max_history, "num_beams": self.num_beams, "eval_template": self.eval_template,
                "with_user": self.builder.with_user, "with_items": self.builder.with_items, "loss": self.loss_kind}
        (directory / "recfm-textid.json").write_text(json.dumps(meta, indent=2))
