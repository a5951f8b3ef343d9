"""SequenceDataset's order check: a file whose sequences were sorted by item id instead of by time
is measured (``stats()["sorted_by_item_id"]``) and named in a warning when it is loaded."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recfm.data.dataset import SequenceDataset
from recfm.data.registry import load_dataset


def dataset(sequences: list[list[str]]) -> SequenceDataset:
    ids = sorted({i for s in sequences for i in s})
    index = {i: k + 1 for k, i in enumerate(ids)}
    flat = [index[i] for s in sequences for i in s]
    return SequenceDataset(name="t", item_ids=ids, item_text=ids, item_titles=ids,
                           user_ids=[f"u{u}" for u in range(len(sequences))],
                           offsets=np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64),
                           items=np.asarray(flat, dtype=np.int64), timestamps=np.full(len(flat), np.nan))


def test_the_share_counts_users_with_an_evaluation_case_whose_items_never_go_down_in_id_order():
    ds = dataset([["a", "b", "c"], ["c", "a", "b"], ["b", "c", "d", "e"], ["e", "a"], ["d"]])
    # eligible (3+ items): the first three; sorted: the first and third; a user boundary going down does not count
    assert ds.sorted_by_item_id_share() == pytest.approx(2 / 3)
    assert ds.stats()["sorted_by_item_id"] == pytest.approx(0.6667)
    assert dataset([["a", "b"], ["c"]]).sorted_by_item_id_share() is None


def test_numeric_ids_are_compared_as_numbers():
    assert dataset([["9", "10", "11"]]).sorted_by_item_id_share() == 1.0  # "10" < "9" as text
    assert dataset([["10", "9", "11"]]).sorted_by_item_id_share() == 0.0


def p5_file(path, users: int, sort: bool):
    rng = np.random.default_rng(0)
    lines = []
    for u in range(users):
        items = [f"B{k:04d}" for k in rng.choice(20, size=5, replace=False)]
        lines.append(" ".join([f"U{u}", *(sorted(items) if sort else items)]))
    path.mkdir(parents=True, exist_ok=True)
    (path / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("sort, users, warned", [(True, 250, True), (False, 250, False), (True, 50, False)],
                         ids=["sorted", "time-order", "too-few-users"])
def test_loading_warns_when_most_sequences_are_sorted_by_id(tmp_path, monkeypatch, caplog, sort, users, warned):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    folder = p5_file(tmp_path / "p5", users, sort)
    for _ in range(2):  # built from the source, then read from the cache: both warn
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="recfm.data.registry"):
            data = load_dataset(folder)
        assert any("sorted by item id" in r.getMessage() for r in caplog.records) is warned
    assert (data.stats()["sorted_by_item_id"] == 1.0) is sort
