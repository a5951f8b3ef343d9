"""IDGenRec's ID generator: a seq2seq model (T5) that writes textual IDs from item text, can be
warm-started on target IDs, and assigns unique IDs by Algorithm 1 (:mod:`recfm.textid.unique_ids`).

    from recfm.textid.generator import IDGenerator
    from recfm.textid.initial_ids import InitialIds, initial_ids

    targets, report = initial_ids(ds.item_ids, ds.item_text, InitialIds(kind="extractive"))
    gen = IDGenerator.from_texts(ds.item_text, size="tiny")        # Unigram tokenizer + random T5
    gen.warm_start(ds.item_text, targets, epochs=3)                # teacher forcing, text -> ID
    ids, stats = gen.assign(ds.item_text)                          # unique IDs, Algorithm 1
    stats.as_dict()   # items, second_attempt_share, longer_id_share, suffixed, rounds, seconds
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import torch

from recfm.models.batching import pad_rows
from recfm.compute import eval_mode
from recfm.textid.diverse_beam import diverse_beam_search
from recfm.textid.ids import normalize_id
from recfm.textid.unique_ids import (
    AssignStats,
    CandidateFn,
    UniqueIdConfig,
    assign_unique_ids,
    assign_unique_ids_sequential,
    dbs_candidate_fn,
)

log = logging.getLogger("recfm.textid")


class IDGenerator:
    """A seq2seq model (T5) + tokenizer that turns item text into textual IDs.

    ``generate_ids`` runs batched diverse beam search; ``assign`` runs Algorithm 1 on it;
    ``warm_start`` trains text -> target ID with teacher forcing; ``save_pretrained`` /
    ``from_pretrained`` use one Hugging Face folder (model + tokenizer). Encoder-decoders only
    (``diverse_beam_search`` itself also takes causal LMs)."""

    def __init__(self, model, tokenizer, *, max_source_length: int = 256, max_target_length: int = 24):
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("IDGenerator wraps an encoder-decoder (seq2seq) model")
        self.model = model
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length

    @classmethod
    def from_texts(cls, texts: Sequence[str], size: str = "tiny", vocab_size: int = 8000, seed: int = 0,
                   lowercase: bool = True, **t5_overrides) -> "IDGenerator":
        """A fresh generator: a Unigram tokenizer trained on ``texts`` (lowercased by default, as
        IDs are) and a randomly initialised T5 (``recfm.models.build_seq2seq``)."""
        from recfm.models import build_seq2seq, train_tokenizer

        tok = train_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)
        return cls(build_seq2seq(size, tok, seed=seed, **t5_overrides).eval(), tok)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None, **kwargs) -> "IDGenerator":
        from recfm.models import load_seq2seq

        model, tok = load_seq2seq(path, device=device)
        return cls(model, tok, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate_ids(self, texts: Sequence[str], *, num_groups: int = 5, beams_per_group: int = 1,
                     diversity_penalty: float = 0.0, min_new_tokens: int = 1, max_new_tokens: int = 9,
                     batch_size: int = 64, length_penalty: float = 1.0) -> list[list[str]]:
        """``num_groups`` normalised candidate IDs per text (diverse beam search)."""
        return diverse_beam_search(self.model, self.tokenizer, texts, num_groups=num_groups,
                                   beams_per_group=beams_per_group, diversity_penalty=diversity_penalty,
                                   min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, length_penalty=length_penalty,
                                   max_source_length=self.max_source_length)

    def candidate_fn(self, num_groups: int = 5, beams_per_group: int = 1, batch_size: int = 64,
                     no_repeat_words: bool = False) -> CandidateFn:
        return dbs_candidate_fn(self.model, self.tokenizer, num_groups=num_groups, beams_per_group=beams_per_group,
                                batch_size=batch_size, max_source_length=self.max_source_length,
                                no_repeat_words=no_repeat_words)

    def assign(self, texts: Sequence[str], config: UniqueIdConfig | None = None, *, sequential: bool = False,
               taken: Iterable[str] = (), progress: bool = False) -> tuple[list[str], AssignStats]:
        """Unique IDs for ``texts`` by Algorithm 1 (batched unless ``sequential``)."""
        cfg = config or UniqueIdConfig()
        fn = self.candidate_fn(cfg.num_groups, cfg.beams_per_group, cfg.batch_size, cfg.no_repeat_words)
        if sequential:
            return assign_unique_ids_sequential(texts, fn, cfg, taken=taken)
        return assign_unique_ids(texts, fn, cfg, taken=taken, progress=progress)

    # -- training ---------------------------------------------------------------------------

    def _batch(self, texts: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        src = tok(list(texts), truncation=True, max_length=self.max_source_length, padding=True, return_tensors="pt")
        eos = tok.eos_token_id
        tgt = tok(list(targets), add_special_tokens=False)["input_ids"]
        tgt = [x[: self.max_target_length - 1] + [eos] for x in tgt]
        labels = pad_rows(tgt, -100)
        dev = self.device
        return {"input_ids": src["input_ids"].to(dev), "attention_mask": src["attention_mask"].to(dev),
                "labels": labels.to(dev)}

    @torch.no_grad()
    def loss(self, texts: Sequence[str], targets: Sequence[str], batch_size: int = 64) -> float:
        """Mean teacher-forced cross-entropy per target token (eval mode, no dropout)."""
        total, count = 0.0, 0
        with eval_mode(self.model):
            for s in range(0, len(texts), batch_size):
                b = self._batch(texts[s : s + batch_size], targets[s : s + batch_size])
                n = int((b["labels"] != -100).sum())
                total += float(self.model(**b).loss) * n
                count += n
        return total / max(count, 1)

    def warm_start(self, texts: Sequence[str], targets: Sequence[str], epochs: int = 1, lr: float = 1e-3,
                   batch_size: int = 32, *, seed: int = 0, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                   progress: bool = True) -> list[float]:
        """Teacher-forced training on (text -> target ID) pairs, e.g. extractive or table IDs, with
        AdamW; pairs with an empty target are skipped. Shuffling and dropout are seeded (the global
        RNG is left alone). Returns the mean training loss of each epoch; the model ends in eval mode."""
        from tqdm.auto import tqdm

        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        pairs = [(x, normalize_id(y)) for x, y in zip(texts, targets) if normalize_id(y)]
        if not pairs:
            raise ValueError("warm_start needs at least one non-empty target")
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        n_batches = math.ceil(len(pairs) / batch_size)
        self.model.train()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                bar = tqdm(total=epochs * n_batches, desc="warm-start", disable=not progress, unit="batch")
                for epoch in range(epochs):
                    perm = torch.randperm(len(pairs), generator=gen).tolist()
                    total, count = 0.0, 0
                    for s in range(0, len(perm), batch_size):
                        chunk = [pairs[i] for i in perm[s : s + batch_size]]
                        b = self._batch([p[0] for p in chunk], [p[1] for p in chunk])
                        loss = self.model(**b).loss
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if max_grad_norm:
                            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
                        opt.step()
                        total += float(loss.detach()) * len(chunk)
                        count += len(chunk)
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                    losses.append(total / count)
                    log.info("warm-start epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
                bar.close()
        finally:
            self.model.eval()
        return losses
