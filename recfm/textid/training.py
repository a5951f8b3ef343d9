"""IDGenRec training: initial IDs, the base recommender, the ID generator, alternate rounds.

``TextIDModel`` is the ``textid`` row of the model table. ``fit`` runs, for ``rounds`` rounds:

1. item IDs: round 1 takes the initial IDs (``initial_ids``: the paper's table, extractive words
   or LLM keywords; made unique by the suffix rule); later rounds regenerate all IDs with the
   current generator by batched Algorithm 1 (``recfm.textid.unique_ids.assign_unique_ids``);
2. the recommender, generator frozen: ``rec_epochs`` of teacher forcing on every training prefix
   (one of the 10 templates sampled per instance), selected on validation;
3. the generator, recommender frozen: the expected token embedding ``softmax(generator logits) @
   E_rec`` replaces the history's ID tokens in the prompt and the recommendation loss trains the
   generator.

``alternate_order`` says where step 3 sits in a round. ``generator_first`` (the paper, section 3.1:
"we begin by training the ID generator for 1 epoch, followed by training the base recommender for
10 epochs, for a total of 3 iterations") runs 3, then 1 with the new IDs, then 2;
``recommender_first`` runs 2 then 3, and skips 3 in the last round (its IDs would never be trained on).

``strategy`` gives the paper's ablations: ``rec_only`` (step 2 only), ``id_only`` (step 3 only,
the recommender stays as loaded) and ``alternate``. ``prompt_ids`` picks item IDs, user IDs or
both. The best validation state over all rounds (weights, IDs and generator together) is kept.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from recfm import distributed
from recfm.compute import WeightAverage, training_context
from recfm.models.batching import autocast_dtype
from recfm.curves import TrainingHistory
from recfm.data.split import LeaveOneOut
from recfm.evaluation.protocol import Protocol, evaluate
from recfm.recommender import TrainableRecommender
from recfm.data.windows import training_windows
from recfm.textid.backbones import (_is_seq2seq_folder, check_shared_vocabulary, load_backbone, load_generator,
                                    scratch_size)
from recfm.data.catalog import Catalog
from recfm.textid.config import TextIDConfig
from recfm.textid.generator import IDGenerator
from recfm.textid.ids import make_unique, normalize_id
from recfm.textid.initial_ids import initial_ids
from recfm.textid.item_level import ItemLevelNet, ItemLevelRecommender, WordVocab, is_item_level, word_vectors
from recfm.textid.prompts import TEMPLATES, PromptBuilder
from recfm.textid.sequence import SCRATCH_BACKBONE, SequenceRecommender, is_sequence_run
from recfm.textid.recommender import (INITIAL_IDS_FILE, ITEM_IDS_FILE, ItemIdTable, TextIDRecommender, pad_rows,
                                      write_id_table)
from recfm.textid.user_ids import UserIds

log = logging.getLogger("recfm.textid")

REPORT_FILE = "textid.json"


# -- training instances -----------------------------------------------------------------------
def training_instances(train: Sequence[np.ndarray], per_user: int | None = None) -> np.ndarray:
    """``[n, 2]`` (user, position): every training prefix predicts its next item (``per_user``: only
    each user's most recent ones). Only ``split.train`` is read, so no validation or test target is
    ever a training target or input."""
    rows = [(u, j) for u, seq in enumerate(train)
            for j in range(max(1, len(seq) - per_user) if per_user else 1, len(seq))]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def instance_batches(instances: np.ndarray, train, batch_size: int, rng: np.random.Generator,
                     max_history: int, pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches; inside pools of ``pool`` batches, instances of similar history length go
    together (less padding), then the batches are shuffled again."""
    perm = rng.permutation(len(instances))
    lengths = np.minimum(instances[perm, 1], max_history)
    out = []
    span = batch_size * pool
    for s in range(0, len(perm), span):
        chunk = perm[s : s + span][np.argsort(lengths[s : s + span], kind="stable")]
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def _histories(instances: np.ndarray, rows: np.ndarray, train) -> tuple[list[np.ndarray], np.ndarray]:
    hist = [train[u][:j] for u, j in instances[rows]]
    targets = np.asarray([train[u][j] for u, j in instances[rows]], dtype=np.int64)
    return hist, targets


# -- the model-table entry --------------------------------------------------------------------
class TextIDModel(TrainableRecommender):
    """IDGenRec behind the model-table contract (``fit`` / ``recommend`` / ``save`` / ``load``)."""

    uses_catalog = True
    writes_history = True
    zero_shot = True  # for_catalog: item IDs come from item text (the generator or the initial-ID rule)

    def __init__(self, config: TextIDConfig, n_items: int, catalog: Catalog):
        if catalog.n_items != n_items:
            raise ValueError(f"catalog has {catalog.n_items} items, dataset {n_items}")
        self.config = config
        self.catalog = catalog
        self.n_items = n_items
        self.generator: IDGenerator | None = None
        self.rec: TextIDRecommender | None = None
        self.report: dict[str, Any] = {}
        self.initial_ids: list[str] | None = None  # what training started from, saved beside the final IDs
        self._curves = TrainingHistory(None)  # fit(run_dir=...) records there

    # -- the seam ---------------------------------------------------------------------------
    def recommend(self, histories, k, exclude=None):
        if self.rec is None:
            raise RuntimeError("TextIDModel is not trained: call fit() or load()")
        return self.rec.recommend(histories, k, exclude)

    def textual_ids(self) -> list[str]:
        return self.rec.items.texts if self.rec else []

    @property
    def search_beam(self) -> int | None:
        return self.rec.search_beam if self.rec else None

    # -- set-up -----------------------------------------------------------------------------
    def _initial_ids(self) -> tuple[list[str], dict]:
        cfg = self.config.initial_ids
        if cfg.kind == "table" and cfg.path and cfg.path.startswith("dataset:"):
            if self.catalog.source_dir is None:
                raise ValueError(f"initial_ids.path {cfg.path!r} needs a dataset folder; give a file path instead")
            cfg = cfg.model_copy(update={"path": str(self.catalog.source_dir / cfg.path[len("dataset:"):])})
        ids, report = initial_ids(self.catalog.item_keys, self.catalog.texts, cfg, progress=True)
        ids, suffixed = make_unique([normalize_id(x) for x in ids])
        rep = report.as_dict()
        rep["suffixed"] = rep.get("suffixed", 0) + suffixed
        self.initial_ids = ids
        return ids, rep

    def _build(self, log_fn: Callable[[str], None]) -> list[str]:
        cfg = self.config
        ids0, report = self._initial_ids()
        self.report["initial_ids"] = report
        log_initial_ids(cfg, report, ids0, log_fn)
        texts = [t.lower() for t in self.catalog.texts]
        if scratch_size(cfg.generator) is None:  # a pretrained generator brings the tokenizer both share
            self.generator = load_generator(cfg.generator, None, cfg)
            model, tok = load_backbone(cfg.backbone, texts, cfg, extra_texts=ids0, tokenizer=self.generator.tokenizer)
        else:
            model, tok = load_backbone(cfg.backbone, texts, cfg, extra_texts=ids0)
            self.generator = load_generator(cfg.generator, tok, cfg)
        check_shared_vocabulary(self.generator, model, tok)
        builder = PromptBuilder(tok, with_user=cfg.prompt_ids != "item", with_items=cfg.prompt_ids != "user",
                                max_tokens=cfg.max_prompt_tokens)
        users = UserIds(self.generator, self.catalog.titles) if cfg.prompt_ids != "item" else None
        self.rec = TextIDRecommender(model.to(cfg.device), tok, ItemIdTable.build(ids0, tok), builder,
                                     max_history=cfg.max_history, num_beams=cfg.num_beams,
                                     eval_template=cfg.eval_template, eval_batch_size=cfg.eval_batch_size,
                                     user_ids=users, loss=cfg.loss)
        self.generator.model.to(cfg.device)
        if cfg.warm_start_epochs:
            t0 = time.perf_counter()
            losses = self.generator.warm_start(self.catalog.texts, ids0, epochs=cfg.warm_start_epochs,
                                               lr=cfg.warm_start_lr, seed=cfg.seed)
            self.report["generator_warm_start"] = {"epochs": cfg.warm_start_epochs, "losses": losses,
                                                   "seconds": round(time.perf_counter() - t0, 1)}
            log_fn(f"generator warm start: loss {losses[-1]:.3f} after {cfg.warm_start_epochs} epochs")
            for i, value in enumerate(losses, 1):
                self._curves.log(warm_start_epoch=i, warm_start_loss=round(float(value), 5),
                                  warm_start_lr=cfg.warm_start_lr)
        return ids0

    # -- fit --------------------------------------------------------------------------------
    def fit(self, split: LeaveOneOut, protocol: Protocol | None = None, log: Callable[[str], None] = print,
            run_dir: Path | None = None) -> dict:
        """With ``run_dir``, every warm-start, recommender and generator epoch is a line of
        ``run_dir/history.jsonl`` (in training order) and ``curves.png`` is drawn at the end."""
        protocol = protocol or Protocol()
        self._curves = TrainingHistory(run_dir, self.config.report_to, x=None, group="round",
                                       metrics=(protocol.selection_metric, "hr@10"), best=protocol.selection_metric,
                                       title="textid",
                                       x_label="warm-start / recommender / generator epoch, in training order")
        with training_context(self.config.num_threads, self.config.seed), self._curves:
            self._curves.start()
            return self._fit(split, protocol, log)

    def _fit(self, split: LeaveOneOut, protocol: Protocol, log_fn: Callable[[str], None]) -> dict:
        cfg = self.config
        start = time.perf_counter()
        budget = cfg.max_train_minutes * 60 if cfg.max_train_minutes else math.inf
        if cfg.formulation == "items":
            return self._fit_items(split, protocol, log_fn, start, budget)
        if cfg.formulation == "sequence":
            return self._fit_sequence(split, protocol, log_fn, start, budget)
        self._build(log_fn)
        instances = training_instances(split.train, cfg.max_instances_per_user)
        if len(instances) == 0:
            raise ValueError("no training sequence has two or more items")
        rng = np.random.default_rng(cfg.seed)
        valid = selection_cases(split.valid, cfg.valid_sample, rng)
        rec_model = self.rec.model
        optimizer = torch.optim.AdamW([p for p in rec_model.parameters() if p.requires_grad], lr=cfg.rec_lr,
                                      weight_decay=cfg.rec_weight_decay)
        log_fn(f"textid: {len(instances)} training instances, {len(valid)} validation cases for selection, "
               f"{sum(p.numel() for p in rec_model.parameters()) / 1e6:.1f}M recommender parameters, "
               f"strategy {cfg.strategy}, prompt IDs {cfg.prompt_ids}, {torch.get_num_threads()} threads")
        metric = protocol.selection_metric
        best: dict[str, Any] = {"value": -math.inf}
        history: list[dict] = []
        rounds: list[dict] = []
        stopped = "completed"
        trains_generator = cfg.strategy != "rec_only"
        generator_first = cfg.alternate_order == "generator_first"
        for r in range(1, cfg.rounds + 1):
            round_info: dict[str, Any] = {"round": r}
            if trains_generator and generator_first:
                round_info["generator"] = self._train_generator(instances, split.train, rng, log_fn, r)
            if trains_generator and (generator_first or r > 1):
                round_info["assign"] = self._regenerate_ids(log_fn)
            if cfg.strategy != "id_only":
                stopped = self._train_recommender(r, instances, split.train, valid, protocol, optimizer, rng, best,
                                                  history, start, budget, log_fn)
            else:
                self._select(r, 0, valid, protocol, best, history, log_fn)
            # recommender first: the last round's generator epochs would produce IDs nobody trains on
            if trains_generator and not generator_first and r < cfg.rounds and stopped != "budget":
                round_info["generator"] = self._train_generator(instances, split.train, rng, log_fn, r)
            if trains_generator and r > 1 and best.get("round") != r and r < cfg.rounds:
                # the round's IDs did not beat the best state on validation: the next round starts from that
                # state again (weights, IDs, generator) instead of building on worse IDs
                self._restore(best)
                round_info["rejected"] = True
                log_fn(f"round {r}: validation did not improve on round {best.get('round')}: its IDs are rejected, "
                       f"round {r + 1} starts from round {best.get('round')}'s state")
            rounds.append(round_info)
            if stopped == "budget":
                break
        self._restore(best)
        total = time.perf_counter() - start
        log_fn(f"textid: done in {total:.0f}s ({stopped}); best round {best.get('round')} epoch {best.get('epoch')} "
               f"valid {metric} {best['value']:.5f}")
        self.report["rounds"] = rounds
        return {"best_round": best.get("round"), "best_epoch": best.get("epoch"), "best_valid": best.get("valid", {}),
                "stopped": stopped, "seconds": round(total, 1), "history": history, "rounds": rounds,
                "initial_ids": self.report.get("initial_ids"), "training_instances": int(len(instances))}

    def _select(self, r: int, epoch: int, valid, protocol, best: dict, history: list, log_fn, row: dict | None = None):
        row = row if row is not None else {"round": r, "epoch": epoch}
        m = evaluate(self.rec, valid, protocol)
        row["valid"] = _valid_row(m)
        row["valid_seconds"] = round(m["eval_seconds"], 1)
        metric = protocol.selection_metric
        if m[metric] > best["value"]:
            best.update(value=m[metric], round=r, epoch=epoch, valid=row["valid"], state=self._snapshot())
        history.append(row)
        self._log_row(row)
        log_fn(f"round {r} epoch {epoch}: valid {metric} {m[metric]:.5f} hr@10 {m.get('hr@10', math.nan):.5f} "
               f"(best {best['value']:.5f}) [{m['eval_seconds']:.0f}s eval]")
        return m[metric]

    def _log_row(self, row: dict) -> None:
        self._curves.log(**row, **({"lr": self.config.rec_lr} if "loss" in row else {}))

    def _snapshot(self) -> dict:
        gen = self.generator.model.state_dict() if self.generator is not None else {}
        return {"rec": {k: v.detach().clone() for k, v in self.rec.model.state_dict().items()},
                "gen": {k: v.detach().clone() for k, v in gen.items()},
                "items": self.rec.items}

    def _restore(self, best: dict) -> None:
        state = best.get("state")
        if state is None:
            return
        self.rec.model.load_state_dict(state["rec"])
        if self.generator is not None:
            self.generator.model.load_state_dict(state["gen"])
        self.rec.items = state["items"]
        if getattr(self.rec, "user_ids", None) is not None:
            self.rec.user_ids.clear()
        self.rec.model.eval()

    def _train_recommender(self, r, instances, train, valid, protocol, optimizer, rng, best, history, start, budget,
                           log_fn) -> str:
        from tqdm.auto import tqdm

        cfg = self.config
        model = self.rec.model
        trainable = [p for p in model.parameters() if p.requires_grad]
        since_best = 0
        for epoch in range(1, cfg.rec_epochs + 1):
            t0 = time.perf_counter()
            batches = instance_batches(instances, train, cfg.batch_size, rng, cfg.max_history)
            model.train()
            total, count = 0.0, 0
            bar = tqdm(batches, desc=f"round {r} epoch {epoch}", unit="batch", mininterval=5)
            for rows in bar:
                templates = rng.integers(0, len(TEMPLATES), size=len(rows))  # drawn for the whole batch

                def batch_of(mine: np.ndarray, shard: slice) -> dict:
                    hist, targets = _histories(instances, mine, train)
                    return self.rec.batch(self.rec.prompts(hist, templates[shard].tolist()), targets)

                optimizer.zero_grad(set_to_none=True)
                loss = _sharded_backward(self.rec, rows, batch_of)
                distributed.sum_gradients(trainable)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                total += loss * len(rows)
                count += len(rows)
                if distributed.any_process(time.perf_counter() - start > budget):
                    break
            bar.close()
            model.eval()
            row = {"round": r, "epoch": epoch, "loss": round(total / max(count, 1), 5),
                   "train_seconds": round(time.perf_counter() - t0, 1)}
            over = distributed.any_process(time.perf_counter() - start > budget)
            if epoch % cfg.eval_every == 0 or epoch == cfg.rec_epochs or over:
                before = best["value"]
                self._select(r, epoch, valid, protocol, best, history, log_fn, row)
                since_best = 0 if best["value"] > before else since_best + 1
            else:
                history.append(row)
                self._log_row(row)
            log_fn(f"round {r} epoch {epoch}: loss {row['loss']:.4f} [{row['train_seconds']:.0f}s train, "
                   f"{time.perf_counter() - start:.0f}s total]")
            if over:
                return "budget"
            if since_best >= cfg.patience:
                return "patience"
        return "completed"

    # -- formulations items and sequence: whole training sequences, fixed IDs ----------------
    def _fit_items(self, split: LeaveOneOut, protocol: Protocol, log_fn: Callable[[str], None], start: float,
                   budget: float) -> dict:
        """The item-level model (:mod:`recfm.textid.item_level`) on the initial IDs."""
        cfg = self.config
        ids0, report = self._fixed_ids(log_fn)
        vocab = WordVocab.of_ids(ids0)
        vectors = None
        if cfg.items.word_rows != "free":
            clock = time.perf_counter()
            vectors = word_vectors(vocab, cfg.items.word_encoder)
            log_fn(f"word rows: {cfg.items.word_rows}, {cfg.items.word_encoder} vectors of {len(vocab)} words "
                   f"({time.perf_counter() - clock:.0f} s)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = ItemLevelNet(cfg.items, len(vocab), cfg.max_history, word_vectors=vectors, n_items=len(ids0))
        self.rec = ItemLevelRecommender(net.to(cfg.device), vocab, ids0, max_len=cfg.max_history,
                                        num_beams=cfg.num_beams, eval_batch_size=cfg.eval_batch_size, loss=cfg.loss)
        return self._fit_windows(split, protocol, log_fn, start, budget, report, f"{len(vocab)} ID words")

    def _fit_sequence(self, split: LeaveOneOut, protocol: Protocol, log_fn: Callable[[str], None], start: float,
                      budget: float) -> dict:
        """A causal LM on each user's whole sequence of initial IDs (:mod:`recfm.textid.sequence`)."""
        from recfm.models import build_causal_lm, train_tokenizer

        cfg = self.config
        ids0, report = self._fixed_ids(log_fn)
        if cfg.backbone == SCRATCH_BACKBONE:  # a tokenizer of the ID words only: no interaction data reaches it
            tok = train_tokenizer(ids0, vocab_size=cfg.vocab_size, lowercase=True)
            sizes = cfg.sequence
            model = build_causal_lm(tok, hidden_size=sizes.hidden_size, num_layers=sizes.num_layers,
                                    num_heads=sizes.num_heads, intermediate_size=sizes.intermediate_size,
                                    max_positions=sizes.max_tokens, attention_dropout=sizes.attention_dropout,
                                    seed=cfg.seed)
        else:
            model, tok = load_backbone(cfg.backbone, [], cfg)
        self.rec = SequenceRecommender(model.to(cfg.device), tok, ItemIdTable.build(ids0, tok),
                                       max_history=cfg.max_history, num_beams=cfg.num_beams,
                                       eval_batch_size=cfg.eval_batch_size, loss=cfg.loss,
                                       max_tokens=cfg.sequence.max_tokens)
        return self._fit_windows(split, protocol, log_fn, start, budget, report, f"{len(tok)} tokens")

    def _fixed_ids(self, log_fn: Callable[[str], None]) -> tuple[list[str], dict]:
        ids0, report = self._initial_ids()
        self.report["initial_ids"] = report
        log_initial_ids(self.config, report, ids0, log_fn)
        return ids0, report

    def _fit_windows(self, split: LeaveOneOut, protocol: Protocol, log_fn: Callable[[str], None], start: float,
                     budget: float, report: dict, vocabulary: str) -> dict:
        """Epochs over the training windows of ``split.train`` (``self.rec.train_epoch``), selection on
        validation, patience, the time budget read after every step."""
        from tqdm.auto import tqdm

        cfg = self.config
        name = cfg.formulation
        windows = training_windows(split.train, cfg.max_history)  # split.train only: never a valid/test target
        if len(windows) == 0:
            raise ValueError("no training sequence has two or more items")
        rng = np.random.default_rng(cfg.seed)
        valid = selection_cases(split.valid, cfg.valid_sample, rng)
        params = [p for p in self.rec.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.rec_lr, weight_decay=cfg.rec_weight_decay)
        precision = autocast_dtype(cfg.autocast, self.rec.device)
        precision_name = str(precision or torch.float32).removeprefix("torch.")
        log_fn(f"textid ({name}): {len(windows)} training windows, {vocabulary}, "
               f"{sum(p.numel() for p in self.rec.model.parameters()) / 1e6:.1f}M parameters, {cfg.loss} loss, "
               f"{len(valid)} validation cases for selection, {torch.get_num_threads()} threads, "
               f"{precision_name} training")
        metric = protocol.selection_metric
        best: dict[str, Any] = {"value": -math.inf}
        history: list[dict] = []
        since_best, stopped = 0, "completed"

        def over() -> bool:
            return time.perf_counter() - start > budget

        average = WeightAverage(self.rec.model, cfg.ema_decay) if cfg.ema_decay else None
        decay = linear_decay(optimizer, cfg.rec_epochs * math.ceil(len(windows) / cfg.batch_size)) \
            if cfg.rec_lr_decay == "linear" else None

        def after_step() -> None:
            if average is not None:
                average.update()
            if decay is not None:
                decay.step()

        for epoch in range(1, cfg.rec_epochs + 1):
            t0 = time.perf_counter()
            loss, _ = self.rec.train_epoch(
                windows, cfg.batch_size, rng, optimizer, stop=over, autocast=precision, after_step=after_step,
                progress=lambda b: tqdm(b, desc=f"epoch {epoch}", unit="batch", mininterval=5, leave=False))
            row = {"round": 1, "epoch": epoch, "loss": round(loss, 5), "train_seconds": round(time.perf_counter() - t0, 1)}
            if epoch % cfg.eval_every == 0 or epoch == cfg.rec_epochs or over():
                before = best["value"]
                with average.swapped_in() if average else contextlib.nullcontext():  # selected and kept averaged
                    self._select(1, epoch, valid, protocol, best, history, log_fn, row)
                since_best = 0 if best["value"] > before else since_best + 1
            else:
                history.append(row)
                self._log_row(row)
            log_fn(f"epoch {epoch}: loss {row['loss']:.4f} [{row['train_seconds']:.0f}s train, "
                   f"{time.perf_counter() - start:.0f}s total]")
            if over():
                stopped = "budget"
                break
            if since_best >= cfg.patience:
                stopped = "patience"
                break
        self._restore(best)
        rerank = self._choose_rerank_weight(valid, protocol, best, log_fn) if name == "items" else None
        total = time.perf_counter() - start
        log_fn(f"textid ({name}): done in {total:.0f}s ({stopped}); best epoch {best.get('epoch')} "
               f"valid {metric} {best['value']:.5f}")
        return {"best_round": 1, "best_epoch": best.get("epoch"), "best_valid": best.get("valid", {}),
                "stopped": stopped, "seconds": round(total, 1), "history": history, "rounds": [{"round": 1}],
                "initial_ids": report, "training_windows": int(len(windows)), "precision": precision_name,
                **({"rerank": rerank} if rerank else {})}

    def _choose_rerank_weight(self, valid, protocol: Protocol, best: dict, log_fn) -> dict | None:
        """``items.rerank_weights``: each weight scored on the selection cases with the best epoch's
        weights, the best kept (the first on a tie) and written into ``config.items.rerank_weight``."""
        weights = self.config.items.rerank_weights
        if weights == [self.config.items.rerank_weight]:
            return None
        metric, scores = protocol.selection_metric, {}
        chosen, value, chosen_valid = self.config.items.rerank_weight, -math.inf, best.get("valid", {})
        for w in weights:
            self.rec.model.rerank_weight = w
            m = evaluate(self.rec, valid, protocol)
            scores[str(w)] = round(m[metric], 6)
            log_fn(f"items.rerank_weight {w}: valid {metric} {m[metric]:.5f}")
            if m[metric] > value:
                chosen, value = w, m[metric]
                chosen_valid = _valid_row(m)
        self.rec.model.rerank_weight = chosen
        self.config.items = self.config.items.model_copy(update={"rerank_weight": chosen})
        best.update(value=value, valid=chosen_valid)
        log_fn(f"items.rerank_weight {chosen} chosen on validation")
        return {"valid": scores, "chosen": chosen}

    def _regenerate_ids(self, log_fn) -> dict:
        ids, stats = self.generator.assign(self.catalog.texts, self.config.unique, progress=True)
        self.rec.items = ItemIdTable.build(ids, self.rec.tokenizer)
        if self.rec.user_ids is not None:
            self.rec.user_ids.clear()
        info = stats.as_dict()
        log_fn(f"regenerated {len(ids)} item IDs: {info['second_attempt_share']:.2%} needed a second attempt, "
               f"{info['longer_id_share']:.2%} a longer ID, {info['suffixed']} suffixed; e.g. {ids[:3]}")
        return info

    def _train_generator(self, instances, train, rng, log_fn, r: int = 0) -> dict:
        """Generator epochs through the frozen recommender (expected ID embeddings in the prompt)."""
        from tqdm.auto import tqdm

        cfg = self.config
        gen, rec = self.generator, self.rec
        emb = rec.model.get_input_embeddings().weight.detach()
        vocab = gen.model.get_output_embeddings().weight.shape[0]
        table = emb[:vocab]
        opt = torch.optim.AdamW(gen.model.parameters(), lr=cfg.gen_lr)
        trainable = [p for p in rec.model.parameters() if p.requires_grad]  # all, or the LoRA adapters
        for p in trainable:
            p.requires_grad_(False)
        rec.model.eval()
        gen.model.train()
        losses = []
        t0 = time.perf_counter()
        try:
            for epoch in range(cfg.gen_epochs):
                pool = instances
                if cfg.gen_max_instances and len(pool) > cfg.gen_max_instances:
                    pool = pool[np.sort(rng.choice(len(pool), cfg.gen_max_instances, replace=False))]
                total, count = 0.0, 0
                for rows in tqdm(instance_batches(pool, train, cfg.batch_size, rng, cfg.max_history),
                                 desc=f"generator epoch {epoch + 1}", unit="batch", mininterval=5):
                    templates = rng.integers(0, len(TEMPLATES), size=len(rows))

                    def batch_of(mine: np.ndarray, shard: slice) -> tuple[dict, Callable]:
                        hist, targets = _histories(pool, mine, train)
                        soft = _soft_id_fn(gen, rec, [rec.window(h) for h in hist], self.catalog.texts, table)
                        return rec.batch(rec.prompts(hist, templates[shard].tolist()), targets), soft

                    opt.zero_grad(set_to_none=True)
                    loss = _sharded_backward(rec, rows, batch_of)
                    if cfg.gen_id_loss_weight:
                        self._id_loss_backward(pool, rows, train, cfg.gen_id_loss_weight)
                    distributed.sum_gradients(list(gen.model.parameters()))
                    torch.nn.utils.clip_grad_norm_(gen.model.parameters(), 1.0)
                    opt.step()
                    total += loss * len(rows)
                    count += len(rows)
                losses.append(total / max(count, 1))
                self._curves.log(round=r, generator_epoch=epoch + 1, gen_loss=round(losses[-1], 5), gen_lr=cfg.gen_lr)
                log_fn(f"generator epoch {epoch + 1}: recommendation loss through soft IDs {losses[-1]:.4f}")
        finally:
            for p in trainable:
                p.requires_grad_(True)
            gen.model.eval()
        return {"epochs": cfg.gen_epochs, "losses": losses, "seconds": round(time.perf_counter() - t0, 1)}

    def _id_loss_backward(self, pool: np.ndarray, rows: np.ndarray, train, weight: float) -> None:
        """The warm-start loss as a regulariser of a generator step: teacher-forced text -> current ID
        on the items of this process's histories, so that the recommendation loss cannot pull the
        generator away from readable, item-specific IDs (the "1996 1996 ..." collapse)."""
        mine, _ = distributed.batch_share(rows)
        hist, _ = _histories(pool, mine, train)
        windows = [np.asarray(self.rec.window(h), dtype=np.int64) for h in hist]
        items = np.unique(np.concatenate(windows)) if windows else np.zeros(0, dtype=np.int64)
        items = items[items > 0]
        if len(items) == 0:
            return
        batch = self.generator._batch([self.catalog.texts[i - 1] for i in items], [self.rec.items.texts[i] for i in items])
        (self.generator.model(**batch).loss * (weight / distributed.world_size())).backward()

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """``recommender/`` and ``id_generator/`` (save_pretrained folders with the tokenizer),
        ``item_ids.tsv`` (the final IDs), ``item_ids.initial.tsv`` (the IDs training started from)
        and ``textid.json`` (initial-ID and Algorithm 1 reports)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.initial_ids is not None:
            write_id_table(directory / INITIAL_IDS_FILE, self.catalog.item_keys, self.initial_ids)
        if isinstance(self.rec, ItemLevelRecommender):  # no language model and no generator
            self.rec.save_pretrained(directory / "recommender", self.config.items)
            self.rec.items.save(directory / ITEM_IDS_FILE, self.catalog.item_keys)
            (directory / REPORT_FILE).write_text(json.dumps(self.report, indent=2, default=str))
            return
        model = self.rec.model
        if hasattr(model, "merge_and_unload"):  # LoRA: save one plain folder
            model = model.merge_and_unload()
            self.rec.model = model
        self.rec.save_pretrained(directory / "recommender")
        if self.generator is not None:  # formulation sequence trains none
            self.generator.save_pretrained(directory / "id_generator")
        self.rec.items.save(directory / ITEM_IDS_FILE, self.catalog.item_keys)
        (directory / REPORT_FILE).write_text(json.dumps(self.report, indent=2, default=str))

    @classmethod
    def load(cls, directory: Path, config: TextIDConfig, n_items: int, catalog: Catalog) -> "TextIDModel":
        directory = Path(directory)
        rec_dir = directory / "recommender"
        item_level = is_item_level(rec_dir)
        sequence = is_sequence_run(rec_dir)
        for part in ("recommender", ITEM_IDS_FILE) + (() if item_level or sequence else ("id_generator",)):
            if not (directory / part).exists():
                raise FileNotFoundError(f"{directory} has no {part}: training did not finish")
        from recfm.models import load_causal_lm, load_seq2seq

        self = cls(config, n_items, catalog)
        if item_level:
            ids = _read_ids(directory, catalog)
            self.rec = ItemLevelRecommender.from_pretrained(rec_dir, ids, eval_batch_size=config.eval_batch_size,
                                                            device=config.device)
            return self._with_report(directory)
        loader = load_seq2seq if _is_seq2seq_folder(str(rec_dir)) else load_causal_lm
        model, tok = loader(rec_dir, device=config.device)
        if sequence:
            ids = _read_ids(directory, catalog)
            meta = json.loads((rec_dir / "recfm-textid.json").read_text())
            self.rec = SequenceRecommender(model, tok, ItemIdTable.build(ids, tok), max_history=meta["max_history"],
                                           num_beams=meta["num_beams"], eval_batch_size=config.eval_batch_size,
                                           loss=meta.get("loss", "trie"), max_tokens=meta["max_tokens"])
            return self._with_report(directory)
        gen_model, _ = load_seq2seq(directory / "id_generator", device=config.device)
        self.generator = IDGenerator(gen_model, tok)
        ids = _read_ids(directory, catalog)
        meta = json.loads((rec_dir / "recfm-textid.json").read_text())
        builder = PromptBuilder(tok, with_user=meta["with_user"], with_items=meta["with_items"],
                                max_tokens=config.max_prompt_tokens)
        users = UserIds(self.generator, catalog.titles) if meta["with_user"] else None
        self.rec = TextIDRecommender(model, tok, ItemIdTable.build(ids, tok), builder, max_history=meta["max_history"],
                                     num_beams=meta["num_beams"], eval_template=meta["eval_template"],
                                     eval_batch_size=config.eval_batch_size, user_ids=users,
                                     loss=meta.get("loss", "full"))  # runs saved before the field: decoded as then
        return self._with_report(directory)

    def _with_report(self, directory: Path) -> "TextIDModel":
        report = directory / REPORT_FILE
        self.report = json.loads(report.read_text()) if report.is_file() else {}
        return self

    def for_catalog(self, catalog: Catalog, progress: bool = True) -> "TextIDModel":
        """The same trained model on another catalog (zero-shot); nothing of the new dataset's
        interactions is used. Its items get IDs from the trained generator by Algorithm 1 (formulation
        ``prompt``), or by the run's own initial-ID rule over the new catalog's metadata (``items``
        and ``sequence``, which train no generator)."""
        other = TextIDModel(self.config, catalog.n_items, catalog)
        if self.generator is not None:
            other.generator = self.generator
            ids, stats = self.generator.assign(catalog.texts, self.config.unique, progress=progress)
            rec = copy.copy(self.rec)
            rec.items = ItemIdTable.build(ids, rec.tokenizer)
            if rec.user_ids is not None:
                rec.user_ids = UserIds(self.generator, catalog.titles)
            other.rec = rec
            other.report = {"zero_shot_assign": stats.as_dict()}
            return other
        if self.config.formulation == "prompt":
            raise ValueError("zero-shot needs the ID generator to give the new catalog's items IDs; this run "
                             "has none (it was saved without id_generator/)")
        ids, report = other._initial_ids()
        if isinstance(self.rec, ItemLevelRecommender):
            other.rec = self.rec.for_catalog(ids)
            report["words"] = len({w for x in ids for w in normalize_id(x).split()})  # the new catalog's ID words
            report["new_words"] = other.rec.new_words  # of them, unseen in training
            if other.rec.word_map_report:
                report["word_map"] = other.rec.word_map_report  # items.unseen_words: encoder
        else:
            other.rec = copy.copy(self.rec)
            other.rec.items = ItemIdTable.build(ids, self.rec.tokenizer)
        other.report = {"zero_shot_ids": report}
        return other


def _read_ids(directory: Path, catalog: Catalog) -> list[str]:
    keys, ids = ItemIdTable.read(directory / ITEM_IDS_FILE)
    if keys != catalog.item_keys:
        raise ValueError(f"{directory / ITEM_IDS_FILE} lists other items than the dataset; was it trained on it?")
    return ids


def _valid_row(metrics: dict) -> dict:
    """A validation result as the history and ``best_valid`` keep it: the metrics, rounded."""
    return {k: round(v, 6) for k, v in metrics.items() if k not in ("cases", "eval_seconds")}


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate times ``1 - step / total_steps`` (0 from then on), stepped after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(total_steps, 1)))


def selection_cases(valid, sample: int, rng: np.random.Generator):
    """The validation cases epochs are selected on: all, or a seeded sample of ``sample``."""
    if sample and sample < len(valid):
        return valid.subset(np.sort(rng.choice(len(valid), sample, replace=False)))
    return valid


def log_initial_ids(cfg: TextIDConfig, report: dict, ids: list[str], log_fn: Callable[[str], None]) -> None:
    log_fn(f"initial IDs ({cfg.initial_ids.kind}): {report['items']} items, {report.get('fallbacks', 0)} fallbacks, "
           f"{report['suffixed']} suffixed; e.g. {ids[:3]}")


def _sharded_backward(rec: TextIDRecommender, rows: np.ndarray, batch_of: Callable) -> float:
    """Backward of this process's share of a batch; returns the batch's mean token loss.

    Every process drew the same ``rows``; it takes ``rows[rank::world]`` (``batch_of(mine, shard)``
    builds its teacher-forcing batch, optionally with a soft-ID function) and weights its mean token
    loss by its share of the batch's target tokens, so the gradients summed over processes are the
    whole batch's. In one process the weight is 1 and this is ``loss.backward()``."""
    mine, shard = distributed.batch_share(rows)
    local_tokens, local_sum = 0, 0.0
    if len(mine):
        built = batch_of(mine, shard)
        batch, soft = built if isinstance(built, tuple) else (built, None)
        local_tokens = rec.label_tokens(batch)
        loss = rec.loss(batch, soft_ids=soft)
    [tokens] = distributed.all_sum(local_tokens)
    if len(mine):
        (loss * (local_tokens / max(tokens, 1))).backward()
        local_sum = float(loss.detach()) * local_tokens
    [loss_sum] = distributed.all_sum(local_sum)
    return loss_sum / max(tokens, 1)


def _soft_id_fn(gen: IDGenerator, rec: TextIDRecommender, windows: list[list[int]], texts: Sequence[str],
                table: torch.Tensor):
    """``soft(rows, slots, offsets)`` -> expected embeddings of the ID tokens at those prompt positions:
    the generator, teacher-forced on each history item's current ID, gives a softmax over the
    vocabulary per ID position, times the recommender's embedding matrix (probabilities, not
    log-probabilities: the public code multiplied the latter)."""
    dev = rec.device
    width = max((len(w) for w in windows), default=1)
    hist = pad_rows(windows, 0).to(dev) if width else torch.zeros(len(windows), 1, dtype=torch.long, device=dev)

    def soft(rows: torch.Tensor, slots: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        items = hist[rows, slots]
        unique, inverse = torch.unique(items, return_inverse=True)
        src = gen.tokenizer([texts[int(i) - 1] for i in unique], truncation=True, max_length=gen.max_source_length,
                            padding=True, return_tensors="pt")
        labels = pad_rows([rec.items.tokens[int(i)] + [rec.eos] for i in unique], -100)
        out = gen.model(input_ids=src["input_ids"].to(dev), attention_mask=src["attention_mask"].to(dev),
                        labels=labels.to(dev))
        probs = torch.softmax(out.logits.float(), dim=-1)  # [n_unique, id_len + 1, vocab]
        expected = probs @ table.float()  # [n_unique, id_len + 1, d]
        return expected[inverse, offsets]

    return soft
