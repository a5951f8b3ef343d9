"""Rows for words a trained model never saw, predicted from a frozen text encoder (zero-shot transfer).

An item-level textual-ID model learns one row per ID word (its embedding and output bias). An unseen
catalog's IDs are mostly new words (69% of Beauty's ID words never occur in MovieLens + Sports IDs),
which would all sit at one mean row. Here a ridge map is fitted from a pretrained encoder's vector of
each training word to that word's trained rows, and applied to the new words, so "moisturizer" lands
near the trained "lotion" rather than at the mean. Only words (item metadata) are read.

    rows, report = map_new_rows(known_words, known_rows, new_words, encoder_embedder("all-minilm-l6-v2"))
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
HOLDOUT_SHARE = 0.1


def encoder_embedder(name_or_path: str, batch_size: int = 256) -> Callable[[list[str]], torch.Tensor]:
    """``words -> [n, dim]`` unit vectors from the sentence encoder ``name_or_path`` (loaded once, offline
    aliases included)."""
    from recfm.models.embedding import embed_texts
    from recfm.models.loading import load_encoder

    model, tokenizer = load_encoder(name_or_path)

    def embed(words: list[str]) -> torch.Tensor:
        return embed_texts(model, tokenizer, words, batch_size=batch_size, max_length=16)

    return embed


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred ridge regression ``y ~ x``: returns (weights [dx, dy], x mean, y mean)."""
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, xc.T @ (y - my)), mx, my


def predict_ridge(fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    weights, mx, my = fit
    return my + (x - mx) @ weights


def r_squared(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """Share of the variance of ``actual`` (all columns pooled) that ``predicted`` explains."""
    residual = (actual - predicted).pow(2).sum()
    total = (actual - actual.mean(0)).pow(2).sum().clamp(min=1e-12)
    return float(1 - residual / total)


def map_new_rows(known_words: Sequence[str], known_rows: torch.Tensor, new_words: Sequence[str],
                 embed: Callable[[list[str]], torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Rows ``[len(new_words), columns]`` for ``new_words``, from a ridge map ``embed(word) -> row``
    fitted on ``known_words`` / ``known_rows``. The ridge strength is chosen on a held-out tenth of the
    known words (R^2), then the map is refitted on all of them. Returns the rows and a report."""
    if len(known_words) != known_rows.shape[0]:
        raise ValueError(f"{len(known_words)} known words but {known_rows.shape[0]} rows")
    if len(known_words) < 5:
        raise ValueError(f"a word map needs at least 5 trained words, got {len(known_words)}")
    x_known = embed(list(known_words)).double()
    x_new = embed(list(new_words)).double()
    y = known_rows.double()
    order = torch.randperm(len(known_words), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(len(known_words) * HOLDOUT_SHARE))
    held, fit_on = order[:n_held], order[n_held:]
    scores = {alpha: r_squared(predict_ridge(fit_ridge(x_known[fit_on], y[fit_on], alpha), x_known[held]), y[held])
              for alpha in RIDGE_GRID}
    alpha = max(scores, key=scores.get)
    rows = predict_ridge(fit_ridge(x_known, y, alpha), x_new).to(known_rows.dtype)
    report = {"mapped_words": len(new_words), "from_words": len(known_words), "ridge_alpha": alpha,
              "held_out_r2": round(scores[alpha], 4)}
    return rows, report
