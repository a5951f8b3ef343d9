"""A trained multitask run behind the server's seams (``recfm serve --run MULTITASK_RUN``).

    name, catalog, model = load_served_multitask(Path("runs/multitask/cpu/recfound"))
    model.recommend([[12, 40]], k=10)          # user2item retrieval over the prebuilt item index
    model.embed([[12, 40]])                    # the history's vector (user2item, as trained)
    model.embed_texts(["a comedy from the 1990s"], task="query2item", role="query")
    model.answer([{"task": "attribute", "input": "Toy Story (1995)", "options": [...]}])

The catalog is what the run's tasks are about: for MovieLens records the ML-1M movies (the dataset's
item ids, titles and the ``Title (year), genres`` text the tasks use), for a folder of RecFound files
every distinct item text of its embedding records. Items are embedded once as the retrieval task's
documents (``<|embed|>`` + text, routed to that task's experts, as training embedded positives) and
the matrix is cached beside the adapter (``item_index.npy``, keyed by the adapter's and the
catalog's hashes), so a restart does not embed the catalog again.

Recommendation is cosine over that index, so it answers the same ``recommend(histories, k,
exclude)`` call as every other model, and the server's /recommend, validation and micro-batching
are reused unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recfm.atomic import atomic_write_bytes, atomic_write_json
from recfm.compute import eval_mode
from recfm.recommender import ScoringRecommender, TrainableRecommender
from recfm.multitask.model import MultiTaskModel
from recfm.multitask.records import INSTRUCTIONS, EmbRecord, GenRecord
from recfm.multitask.trainer import ADAPTER_FILE

log = logging.getLogger("recfm.multitask")
RETRIEVAL_TASKS = ("user2item", "Emb_user")  # our name and RecFound's for history -> next item
INDEX_FILE, INDEX_META = "item_index.npy", "item_index.json"


@dataclass
class TaskCatalog:
    """The items a multitask run recommends: ids, titles and the text its tasks describe them by.
    It has the attributes the server reads of a dataset (``name``, ``item_ids``, ``item_titles``,
    ``n_items``, ``item_index()``); it has no users."""

    name: str
    item_ids: list[str]
    item_titles: list[str]
    item_text: list[str]
    user_ids: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_index(self) -> dict[str, int]:
        return {it: i + 1 for i, it in enumerate(self.item_ids)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.item_ids, self.item_text]).encode()).hexdigest()[:16]


def movielens_catalog(raw) -> TaskCatalog:
    """The ML-1M movies with the text the MovieLens task builders write (``Movie.text``)."""
    from recfm.multitask.movielens_tasks import movies_from_raw

    movies = list(movies_from_raw(raw).values())
    return TaskCatalog("movielens-1m", [m.key for m in movies], [m.title for m in movies], [m.text() for m in movies])


def records_catalog(records: dict[str, dict[str, list]], name: str) -> TaskCatalog:
    """Every distinct item text of the embedding records (positives and hard negatives, all splits);
    item ids are their 1-based positions as strings."""
    texts = list(dict.fromkeys(t for splits in records.values() for rs in splits.values() for r in rs
                               if isinstance(r, EmbRecord) for t in (r.positive, *r.negatives)))
    return TaskCatalog(name, [str(i + 1) for i in range(len(texts))], texts, texts)


class MultiTaskRecommender(ScoringRecommender, TrainableRecommender):
    """A :class:`~recfm.multitask.model.MultiTaskModel` over a catalog: retrieval by the embedding
    task, embeddings of histories, queries and items, and answers to generative task records."""

    embeds_histories = True
    embeds_text = True
    answers = True

    def __init__(self, model: MultiTaskModel, catalog: TaskCatalog, instructions: dict[str, str], *,
                 history_len: int = 10, answer_tokens: int = 128, batch_size: int = 16):
        self.model = model
        self.catalog = catalog
        self.instructions = instructions
        self.kinds = {t.name: t.kind for t in model.tasks}
        self.generative_tasks = sorted(t for t, k in self.kinds.items() if k == "generative")
        self.embedding_tasks = sorted(t for t, k in self.kinds.items() if k == "embedding")
        self.retrieval_task = next((t for t in RETRIEVAL_TASKS if t in self.kinds), None)
        if self.retrieval_task is None and self.embedding_tasks:
            self.retrieval_task = self.embedding_tasks[0]
        self.history_len = history_len
        self.answer_tokens = answer_tokens
        self.batch_size = batch_size
        self.index: torch.Tensor | None = None

    @property
    def n_items(self) -> int:
        return self.catalog.n_items

    # -- embeddings --------------------------------------------------------------------------
    def history_text(self, history: Sequence[int]) -> str:
        """The history as the MovieLens tasks write it: the last ``history_len`` items, numbered."""
        items = list(history)[-self.history_len :]
        return "\n".join(f"{n + 1}. {self.catalog.item_text[i - 1]}" for n, i in enumerate(items))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], task: str | None = None, role: str = "query") -> np.ndarray:
        """``(len(texts), d)`` unit vectors: each text as the ``task``'s query (its instruction,
        ``<|embed|>``, the text) or as an item (``<|embed|>`` + text), routed to the task's experts."""
        task = task or self.retrieval_task
        if self.kinds.get(task) != "embedding":
            raise ValueError(f"{task!r} is not an embedding task of this run (its embedding tasks: "
                             f"{', '.join(self.embedding_tasks) or 'none'})")
        rows = [EmbRecord.item_text(t) if role == "item" else EmbRecord(task, self.instructions[task], t, "").query_text()
                for t in texts]
        out = []
        with eval_mode(self.model.model):
            for s in range(0, len(rows), self.batch_size):
                out.append(self.model.embed(rows[s : s + self.batch_size], [task] * len(rows[s : s + self.batch_size])))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)

    def embed(self, histories: Sequence[Sequence[int]], task: str | None = None) -> np.ndarray:
        return self.embed_texts([self.history_text(h) for h in histories], task)

    def build_index(self, cache: Path | None = None, adapter_hash: str = "") -> None:
        """Embed every catalog item as the retrieval task's document (or read the cached matrix)."""
        if self.retrieval_task is None:
            return
        key = {"adapter": adapter_hash, "catalog": self.catalog.fingerprint(), "task": self.retrieval_task}
        if cache is not None and (cache / INDEX_META).is_file() and (cache / INDEX_FILE).is_file() \
                and json.loads((cache / INDEX_META).read_text()) == key:
            self.index = torch.from_numpy(np.load(cache / INDEX_FILE))
            return
        log.info("embedding the %d catalog items for retrieval (%s documents; once, then cached in %s)",
                 self.n_items, self.retrieval_task, cache / INDEX_FILE if cache is not None else "memory")
        start = time.perf_counter()
        self.index = torch.from_numpy(self.embed_texts(self.catalog.item_text, role="item"))
        log.info("item index built in %.0f s", time.perf_counter() - start)
        if cache is not None:
            import io

            buffer = io.BytesIO()
            np.save(buffer, self.index.numpy())
            atomic_write_bytes(cache / INDEX_FILE, buffer.getvalue())
            atomic_write_json(cache / INDEX_META, key)

    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        if self.index is None:
            raise RuntimeError("this multitask run has no embedding task to retrieve items with")
        sims = torch.from_numpy(self.embed(histories)) @ self.index.T
        return torch.cat([torch.full((len(histories), 1), -torch.inf), sims], dim=1)

    # -- generative tasks --------------------------------------------------------------------
    def answer(self, requests: Sequence[dict]) -> list[dict]:
        """Each request ``{"task", "input", "instruction"?, "options"?}`` -> ``{"answer", "option"}``:
        with options the chosen one (the letter with the highest next-token logit) and its index,
        without them a greedy answer of at most ``answer_tokens`` tokens (option None)."""
        records = [GenRecord(r["task"], r.get("instruction") or self.instructions[r["task"]], r["input"], "",
                             list(r["options"]) if r.get("options") else None) for r in requests]
        out: list[dict | None] = [None] * len(records)
        with eval_mode(self.model.model):
            chosen = [i for i, r in enumerate(records) if r.options]
            for i, pick in zip(chosen, self.model.choose([records[i] for i in chosen], self.batch_size)):
                out[i] = {"answer": records[i].options[pick], "option": pick}
            free = [i for i, r in enumerate(records) if not r.options]
            for i, text in zip(free, self.model.answer([records[i] for i in free], self.answer_tokens)):
                out[i] = {"answer": text, "option": None}
        return out


def load_served_multitask(run_dir: Path) -> tuple[str, TaskCatalog, MultiTaskRecommender]:
    """(model name, catalog, recommender) of a finished ``recfm multitask train`` run, its item index
    built (or read from its cache in the run directory)."""
    from recfm.multitask.model import load_multitask_model
    from recfm.multitask.movielens_tasks import TaskConfig
    from recfm.multitask.run import build_records, load_raw, load_run_config
    from recfm.multitask.trainer import load_adapter, task_specs

    run_dir = Path(run_dir)
    config = load_run_config(run_dir / "config.yaml")
    records = build_records(config.data, run_dir.parent)
    model = load_multitask_model(task_specs(records), config.train.model)
    load_adapter(model, run_dir)
    if config.data.source == "movielens":
        catalog = movielens_catalog(load_raw("movielens-1m"))
    else:
        catalog = records_catalog(records, Path(config.data.source).name)
    instructions = {t: (INSTRUCTIONS[t][0] if t in INSTRUCTIONS else
                        next((r.instruction for rs in splits.values() for r in rs), "")) for t, splits in records.items()}
    served = MultiTaskRecommender(model, catalog, instructions, history_len=TaskConfig(**config.data.build).history_len,
                                  answer_tokens=config.train.answer_tokens)
    adapter_hash = hashlib.sha256((run_dir / ADAPTER_FILE).read_bytes()).hexdigest()[:16]
    served.build_index(run_dir, adapter_hash)
    name = f"multitask ({config.train.model.adapter}, {config.train.model.backbone})"
    return name, catalog, served
