"""Persistence and the prepared-data cache: round trips, cache hits/misses, keys, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import recfm.data.registry as registry
from recfm.data.cache import cache_key, fingerprint_files
from recfm.atomic import atomic_directory
from recfm.data.dataset import FORMAT_VERSION, SequenceDataset
from recfm.data.preprocess import PrepConfig, preprocess
from recfm.data.registry import load_dataset
from recfm.data.schema import make_raw

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

P5_ITEMS = {"I1": "red shoe", "I2": "blue shoe", "I3": "green hat", "I4": "yellow scarf", "I5": "black belt", "I6": "white sock"}


def write_p5(folder, n_users: int = 6, shift: int = 0):
    """A P5/IDGenRec folder: every user sees all six items in a rotated order (so 5-core keeps all)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(P5_ITEMS)
    lines = []
    for u in range(n_users):
        r = (u + shift) % len(ids)
        lines.append(" ".join([f"U{u}", *(ids[r:] + ids[:r])]))
    (folder / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    (folder / "item_initial_ids.txt").write_text("".join(f"{k} {v}\n" for k, v in P5_ITEMS.items()))
    return folder


def assert_same_dataset(a: SequenceDataset, b: SequenceDataset):
    assert a.name == b.name
    assert a.item_ids == b.item_ids
    assert a.item_text == b.item_text
    assert a.item_titles == b.item_titles
    assert a.user_ids == b.user_ids
    assert a.offsets.dtype == b.offsets.dtype == np.int64 and np.array_equal(a.offsets, b.offsets)
    assert a.items.dtype == b.items.dtype == np.int64 and np.array_equal(a.items, b.items)
    assert a.timestamps.dtype == b.timestamps.dtype == np.float64
    assert np.array_equal(a.timestamps, b.timestamps, equal_nan=True)
    assert a.stats() == b.stats()


def entries(cache_dir) -> list[str]:
    root = cache_dir / "prepared"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ---------------------------------------------------------------------------------------------
# SequenceDataset save / load
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_synthetic(tmp_path):
    raw = make_raw(
        "rt",
        {
            "user_id": ["u", "v", "u", "u", "v", "w", "w", "w"],
            "item_id": ["a", "b", "c", "a", "a", "é", "b", "c"],
            "timestamp": [3.0, 1.0, None, 2.0, 1.5, 7.0, 7.0, 6.0],
        },
        {"item_id": ["a", "b", "é"], "title": ["Alpha", "Beta; two", "Ünïcode"], "genre": ["x", None, "z"]},
    )
    d = preprocess(raw, PrepConfig(user_core=0, item_core=0))
    assert np.isnan(d.timestamps).any() and np.isfinite(d.timestamps).any()
    d.save(tmp_path / "ds")
    back = SequenceDataset.load(tmp_path / "ds")
    assert_same_dataset(d, back)
    assert [s.tolist() for s in (back.split().test.targets, back.split().train_interactions())] == [
        s.tolist() for s in (d.split().test.targets, d.split().train_interactions())
    ]
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["name"] == "rt" and meta["users"] == 3 and meta["format_version"] == FORMAT_VERSION


@pytest.mark.realdata
def test_save_load_round_trip_movielens(ml100k, tmp_path):
    ml100k.save(tmp_path / "ml")
    assert_same_dataset(ml100k, SequenceDataset.load(tmp_path / "ml"))


def test_load_rejects_other_format_version(tmp_path):
    d = preprocess(make_raw("v", {"user_id": ["u"], "item_id": ["a"]}), PrepConfig(user_core=0, item_core=0))
    d.save(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    meta["format_version"] = 0
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="re-run prepare"):
        SequenceDataset.load(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------
# load_dataset and the cache
# ---------------------------------------------------------------------------------------------


def test_folder_dataset_loads_through_load_dataset(tmp_path, cache_dir):
    folder = write_p5(tmp_path / "shoes")
    d = load_dataset(folder)
    assert d.name == "shoes"
    assert (d.n_users, d.n_items, d.n_interactions) == (6, 6, 36)
    assert d.user_ids == [f"U{u}" for u in range(6)]
    assert [d.item_ids[i - 1] for i in d.sequence(1)] == ["I2", "I3", "I4", "I5", "I6", "I1"]
    assert d.item_text[d.item_index()["I3"] - 1] == "title: green hat"
    assert d.item_titles[d.item_index()["I3"] - 1] == "green hat"
    assert load_dataset(str(folder)).item_ids == d.item_ids  # str paths work too


def test_cache_is_written_once_then_read(tmp_path, cache_dir, monkeypatch):
    folder = write_p5(tmp_path / "shoes")
    first = load_dataset(folder)
    names = entries(cache_dir)
    assert len(names) == 1 and names[0].startswith("shoes-")
    entry = cache_dir / "prepared" / names[0]
    assert sorted(p.name for p in entry.iterdir()) == ["interactions.parquet", "items.parquet", "meta.json", "users.parquet"]

    def boom(*a, **k):
        raise AssertionError("preprocess called although the cache holds this dataset")

    monkeypatch.setattr(registry, "preprocess", boom)
    second = load_dataset(folder)
    assert_same_dataset(first, second)
    assert entries(cache_dir) == names
    # use_cache=False always prepares afresh (and so reaches the patched preprocess)
    with pytest.raises(AssertionError, match="preprocess called"):
        load_dataset(folder, use_cache=False)


def test_use_cache_false_writes_nothing(tmp_path, cache_dir):
    folder = write_p5(tmp_path / "shoes")
    fresh = load_dataset(folder, use_cache=False)
    assert entries(cache_dir) == []
    assert_same_dataset(fresh, load_dataset(folder))  # the cached copy equals a fresh prepare


def test_different_prep_config_gives_different_entry(tmp_path, cache_dir):
    folder = write_p5(tmp_path / "shoes")
    a = load_dataset(folder)
    b = load_dataset(folder, PrepConfig(max_user_items=4))
    assert len(entries(cache_dir)) == 2
    assert a.n_interactions == 36 and b.n_interactions == 24
    load_dataset(folder, PrepConfig(max_user_items=4))
    load_dataset(folder, PrepConfig())  # equal to the default: same entry as the first call
    assert len(entries(cache_dir)) == 2


def test_changing_a_source_file_changes_the_key(tmp_path, cache_dir):
    folder = write_p5(tmp_path / "shoes")
    before = load_dataset(folder)
    write_p5(folder, shift=1)  # same users and items, same file size, different order
    after = load_dataset(folder)
    assert len(entries(cache_dir)) == 2
    assert [after.item_ids[i - 1] for i in after.sequence(0)] == ["I2", "I3", "I4", "I5", "I6", "I1"]
    assert before.item_ids[0] == "I1" and after.item_ids[0] == "I2"  # indices follow first appearance
    # the item text file is part of the key too
    (folder / "item_initial_ids.txt").write_text("".join(f"{k} {v} deluxe\n" for k, v in P5_ITEMS.items()))
    assert load_dataset(folder).item_text[0].endswith("deluxe")
    assert len(entries(cache_dir)) == 3


def test_fingerprint_and_key(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello")
    b.write_text("world")
    fp = fingerprint_files([a, b])
    assert fp == fingerprint_files([b, a])  # order of the list does not matter
    assert fp == fingerprint_files([a, b, tmp_path / "missing.txt"])  # absent files are skipped
    b.write_text("worle")  # same size, different content
    assert fingerprint_files([a, b]) != fp
    assert cache_key(1, "x", {"a": 1, "b": 2}) == cache_key(1, "x", {"b": 2, "a": 1})
    assert cache_key(1, "x", {"a": 1}) != cache_key(2, "x", {"a": 1})
    assert len(cache_key("anything")) == 16


# ---------------------------------------------------------------------------------------------
# atomic_directory
# ---------------------------------------------------------------------------------------------


def test_atomic_directory_leaves_nothing_when_the_body_raises(tmp_path):
    parent = tmp_path / "prepared"
    target = parent / "entry"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(target) as tmp:
            (tmp / "half.parquet").write_text("partial")
            (tmp / "sub").mkdir()
            assert tmp.parent == parent and tmp != target
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(parent.iterdir()) == []  # no partial folder, no temporary folder


def test_atomic_directory_success_and_existing_target(tmp_path):
    target = tmp_path / "entry"
    with atomic_directory(target) as tmp:
        (tmp / "meta.json").write_text("{}")
        assert not target.exists()  # nothing visible until the body finishes
    assert (target / "meta.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    # another writer already produced the entry: keep it, leave no temporary folder
    with atomic_directory(target) as tmp:
        (tmp / "meta.json").write_text('{"second": true}')
    assert (target / "meta.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    # a failing body never touches an existing entry
    with pytest.raises(KeyError):
        with atomic_directory(target):
            raise KeyError("x")
    assert (target / "meta.json").read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_interrupted_save_leaves_no_cache_entry(tmp_path, cache_dir, monkeypatch):
    folder = write_p5(tmp_path / "shoes")

    def failing_save(self, directory):
        (directory / "interactions.parquet").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(SequenceDataset, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        load_dataset(folder)
    assert entries(cache_dir) == []
    monkeypatch.undo()
    monkeypatch.setenv("RECFM_CACHE_DIR", str(cache_dir))
    assert load_dataset(folder).n_users == 6
    assert len(entries(cache_dir)) == 1


def test_refresh_rebuilds_once_and_replaces_the_entry(tmp_path, monkeypatch):
    from recfm.data import registry

    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "user_sequence.txt").write_text("\n".join(f"u{u} a b c d e" for u in range(6)) + "\n")
    registry.load_dataset(folder)
    calls = []
    real = registry.preprocess
    monkeypatch.setattr(registry, "preprocess", lambda *a, **k: calls.append(1) or real(*a, **k))
    registry.load_dataset(folder, refresh=True)
    assert calls == [1]
    entries = [p for p in (tmp_path / "cache" / "prepared").iterdir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
