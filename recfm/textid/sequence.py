"""Whole-sequence training of a causal LM on textual IDs (``textid.formulation: sequence``).

A user's training sequence is one token sequence, the IDs separated by the tokenizer's EOS:
``</s> id1 </s> id2 </s> ... idn </s>``. One causal pass trains every next-item prediction of the
sequence, as SASRec does: the loss is on the tokens of ``id2 </s>`` ... ``idn </s>`` (the first item
has no history). Sequences longer than ``max_history`` items are cut into the same overlapping
windows as SASRec's (:func:`recfm.data.windows.training_windows`), so every transition is trained
once an epoch. Only ``split.train`` is read.

Recommendation continues the same text after the history (``</s> id1 </s> ... idn </s>``) and
decodes the next ID under the prefix trie with the KV cache, batched: it is
:class:`~recfm.textid.recommender.TextIDRecommender`'s decoder-only path with this module's prompt.

With the trie loss, the ID tokens of each target item are scored against the tokens the trie allows
after that item's ID prefix (:mod:`recfm.textid.trie_loss`), with logits computed for those tokens
only when the backbone exposes its decoder (``get_decoder()``, every transformers causal LM).

    rec = SequenceRecommender(model, tok, ItemIdTable.build(ids, tok), max_history=50)
    loss, n = rec.window_loss(torch.from_numpy(windows[:64]))
    top = rec.recommend(histories, k=10)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recfm.textid.prompts import Prompt
from recfm.textid.recommender import ItemIdTable, TextIDRecommender, pad_rows, train_on_windows
from recfm.textid.trie_loss import IGNORE, free_positions, prefix_states, trie_log_probs

SCRATCH_BACKBONE = "llama-scratch"  # a Llama-style decoder built from SequenceConfig on a tokenizer trained on the IDs
FORMULATION = "sequence"  # written into recommender/recfm-textid.json


class SequenceConfig(BaseModel):
    """Sizes of the from-scratch decoder (``backbone: llama-scratch``) of ``formulation: sequence``."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(128, ge=8, description="decoder width")
    num_layers: int = Field(2, ge=1, description="decoder blocks")
    num_heads: int = Field(2, ge=1, description="attention heads (must divide hidden_size)")
    intermediate_size: int | None = Field(None, ge=1, description="MLP width; None = 4 * hidden_size")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="attention dropout (Llama has no other dropout)")
    max_tokens: int = Field(1024, ge=16, description="context length: longer prompts keep their newest tokens")


class SequenceBuilder:
    """The history as text the way training wrote it: ``</s> id1 </s> ... idn </s>`` (the
    :class:`~recfm.textid.prompts.PromptBuilder` contract, so the decoding path is shared)."""

    with_user = False
    with_items = True

    def __init__(self, tokenizer, max_tokens: int = 1024):
        self.sep = tokenizer.eos_token_id
        self.max_tokens = max_tokens

    def build(self, history: Sequence[int], id_tokens: Sequence[Sequence[int]], template: int = 0,
              user_tokens: Sequence[int] = ()) -> Prompt:
        tokens, slots, offsets = [self.sep], [-1], [0]
        for j, item in enumerate(history):
            ids = list(id_tokens[item])
            tokens += ids + [self.sep]
            slots += [j] * len(ids) + [-1]
            offsets += list(range(len(ids))) + [0]
        cut = max(0, len(tokens) - self.max_tokens)  # keep the newest items
        return Prompt(tokens[cut:], slots[cut:], offsets[cut:])


def window_tokens(windows: torch.Tensor, id_tokens: Sequence[Sequence[int]], sep: int, pad: int
                  ) -> dict[str, torch.Tensor]:
    """Item windows ``[B, W]`` (right-padded, 0 = none) -> the token batch and the target spans.

    ``input_ids`` / ``attention_mask`` ``[B, T]``; ``labels`` ``[B, T]`` the target tokens (every
    item but a window's first, with its closing separator), ``IGNORE`` elsewhere; ``span_row``,
    ``span_start`` (the column of a target's first token), ``span_tokens`` ``[S, L]`` (its tokens and
    separator, ``IGNORE``-padded): one row per target item, row-major."""
    rows, labels, spans = [], [], []
    for b, window in enumerate(windows.tolist()):
        tokens, target = [sep], [IGNORE]
        for j, item in enumerate(i for i in window if i > 0):
            ids = list(id_tokens[item]) + [sep]
            if j:
                spans.append((b, len(tokens), ids))
            target += ids if j else [IGNORE] * len(ids)
            tokens += ids
        rows.append(tokens)
        labels.append(target)
    return {
        "input_ids": pad_rows(rows, pad),
        "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
        "labels": pad_rows(labels, IGNORE),
        "span_row": torch.tensor([s[0] for s in spans], dtype=torch.long),
        "span_start": torch.tensor([s[1] for s in spans], dtype=torch.long),
        "span_tokens": pad_rows([s[2] for s in spans], IGNORE),
    }


class SequenceRecommender(TextIDRecommender):
    """A causal LM trained on whole sequences of textual IDs, behind ``recommend`` (shared with the
    decoder-only prompt path: only the prompt differs)."""

    def __init__(self, model, tokenizer, items: ItemIdTable, *, max_history: int = 50, num_beams: int = 20,
                 eval_batch_size: int = 64, loss: str = "trie", max_tokens: int = 1024):
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("formulation 'sequence' needs a decoder-only (causal) language model, not a seq2seq one")
        super().__init__(model, tokenizer, items, SequenceBuilder(tokenizer, max_tokens), max_history=max_history,
                         num_beams=num_beams, eval_template=0, eval_batch_size=eval_batch_size, loss=loss)
        self.max_tokens = max_tokens

    # -- training ----------------------------------------------------------------------------
    def window_loss(self, windows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean loss over the target tokens of item ``windows`` ``[B, W]`` and how many tokens it
        averages (with ``trie``: the positions where the trie allows more than one token)."""
        dev = self.device
        batch = window_tokens(windows, self.items.tokens, self.eos, self.pad)
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        if self.loss_kind == "full":
            labels = batch["labels"].to(dev)
            return self.model(input_ids=ids, attention_mask=mask, labels=labels).loss, int(labels[:, 1:].ne(IGNORE).sum())
        targets = batch["span_tokens"].to(dev)  # [S, L]
        valid = targets != IGNORE
        # the state at column c predicts token c + 1: a target's tokens are read from the columns before them
        columns = (batch["span_start"].to(dev)[:, None] - 1 + torch.arange(targets.shape[1], device=dev)[None])
        columns = columns.clamp(max=ids.shape[1] - 1)
        rows = batch["span_row"].to(dev)[:, None].expand_as(columns)
        trie = self.items.trie.to(dev)
        nodes = prefix_states(trie, targets.clamp(min=0))
        free = free_positions(trie, nodes, valid)
        weight = self.model.get_output_embeddings().weight
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        if decoder is not None:
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            lp = trie_log_probs(hidden[rows[free], columns[free]], nodes[free], targets[free], weight, None, trie)
        else:  # no separate decoder: mask the full logits (the same value, more compute)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[rows[free], columns[free]]
            lp = torch.log_softmax(trie.mask_scores(logits.float(), nodes[free]), -1).gather(
                1, targets[free][:, None]).squeeze(1)
        return -lp.mean() if lp.numel() else weight.sum() * 0, int(free.sum())

    def train_epoch(self, windows: np.ndarray, batch_size: int, rng: np.random.Generator,
                    optimizer: torch.optim.Optimizer, *, stop: Callable[[], bool] = lambda: False,
                    progress: Callable | None = None, autocast: torch.dtype | None = None,
                    after_step: Callable[[], None] | None = None) -> tuple[float, int]:
        """One pass over the training windows (:func:`~recfm.textid.recommender.train_on_windows`)."""
        return train_on_windows(self.model, self.window_loss, windows, batch_size, rng, optimizer, stop=stop,
                                progress=progress, autocast=autocast, after_step=after_step)

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, directory: Path) -> None:
        super().save_pretrained(directory)
        meta_path = Path(directory) / "recfm-textid.json"
        meta = json.loads(meta_path.read_text())
        meta.update(formulation=FORMULATION, max_tokens=self.max_tokens)
        meta_path.write_text(json.dumps(meta, indent=2))


def is_sequence_run(rec_dir: Path) -> bool:
    meta = Path(rec_dir) / "recfm-textid.json"
    return meta.is_file() and json.loads(meta.read_text()).get("formulation") == FORMULATION
