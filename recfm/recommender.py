"""The one seam every model answers: top-k items for a batch of histories.

Score-based models (Pop, SASRec, GRU4Rec) subclass :class:`ScoringRecommender` and only
write ``score``; generative models implement ``recommend`` directly (beam search over
textual IDs). The evaluator, the CLI and the server call ``recommend`` and never branch
on the model type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Collection, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class TopK:
    """``items[b, j]`` is the j-th best item index (1-based) for history ``b``; ``scores`` align.
    Rows may end in 0 (padding) when fewer than k items are allowed."""

    items: np.ndarray
    scores: np.ndarray


@runtime_checkable
class Recommender(Protocol):
    n_items: int

    def recommend(
        self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Collection[int]] | None = None
    ) -> TopK: ...


class ScoringRecommender:
    """Adapter from a full score vector over items to :meth:`recommend`."""

    n_items: int

    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores of shape (batch, n_items + 1); column 0 (padding) is ignored."""
        raise NotImplementedError

    @torch.no_grad()
    def recommend(
        self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Collection[int]] | None = None
    ) -> TopK:
        # A copy: the masking below must not write into a tensor the model may keep (cached scores).
        scores = self.score(histories).float().clone()
        scores[:, 0] = -torch.inf
        if exclude is not None:
            rows = [b for b, ex in enumerate(exclude) for _ in ex]
            cols = [int(i) for ex in exclude for i in ex]
            if cols:
                scores[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = -torch.inf
        k = min(k, self.n_items)
        top = torch.topk(scores, k, dim=1)
        values = top.values.cpu().numpy()  # scores may live on a GPU
        items = top.indices.cpu().numpy().astype(np.int64)
        items[~np.isfinite(values)] = 0
        return TopK(items=items, scores=values)


class TrainableRecommender:
    """What a run (recfm/runs.py) may ask of a model class listed in :mod:`recfm.model_table`.

    The contract::

        model = Model(config, n_items[, catalog=])
        model.fit(split, protocol, log, ...)   # reads split.train and split.valid only; selects on validation
        model.recommend(histories, k, exclude)  # the Recommender seam
        model.save(directory); Model.load(directory, config, n_items[, catalog=])

    Optional capabilities are class attributes with their defaults here, read directly (never
    probed with getattr / hasattr): a model that has one sets it to True on its class.
    """

    resumable: ClassVar[bool] = False  # fit() takes checkpoints= and resume=
    resume_free: ClassVar[tuple[str, ...]] = ()  # config keys a resumed run may change (budgets, threads)
    writes_history: ClassVar[bool] = False  # fit() takes run_dir= and writes history.jsonl / curves.png there
    reports_validation: ClassVar[bool] = False  # fit() takes on_validation=(epoch, metrics) (recfm tune prunes on it)
    uses_catalog: ClassVar[bool] = False  # the constructor and load() take catalog= (item keys, texts, titles)
    zero_shot: ClassVar[bool] = False  # for_catalog(catalog) gives the trained model on an unseen dataset's items
    embeds_histories: ClassVar[bool] = False  # embed(histories) -> (batch, d) array whose dot products score items
    embeds_text: ClassVar[bool] = False  # embed_texts(texts, task, role) and embedding_tasks (multitask runs)
    answers: ClassVar[bool] = False  # answer(requests) for generative task records and generative_tasks (multitask)

    def textual_ids(self) -> list[str] | None:
        """Each item's textual ID (index 0 = item 1) for models that recommend by ID text, else None."""
        return None

    @property
    def search_beam(self) -> int | None:
        """The fixed beam a beam-search model answers every k up to it with; None for score-based models."""
        return None
