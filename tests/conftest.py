"""Shared fixtures for the data/evaluation tests. Kept small on purpose."""

from __future__ import annotations

import pytest

from recfm.data.registry import DatasetNotFoundError, load_dataset, shared_data_root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private, empty cache root (RECFM_CACHE_DIR) so tests never touch ~/.cache/recfm."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RECFM_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def ml100k():
    """MovieLens-100K with its default preparation, read once per session, never written to a cache."""
    try:
        return load_dataset("movielens-100k", use_cache=False)
    except DatasetNotFoundError as e:
        pytest.skip(f"movielens-100k unavailable ({e})")


@pytest.fixture
def amazon_beauty_dir():
    """Folder of the real Amazon Beauty data; skips the test when ../shared/data is absent."""
    path = shared_data_root() / "amazon-beauty"
    if not (path / "user_sequence.txt").is_file():
        pytest.skip(f"{path} not found: Amazon data is read from ../shared/data (or $RECFM_SHARED_DATA); skipping")
    return path


REAL_DATA_FIXTURES = {"ml100k", "amazon_beauty_dir"}


def pytest_collection_modifyitems(config, items):
    """Real-data tests are slow tests too (``make test-fast`` runs ``-m "not slow"``): marked
    ``realdata`` by hand, or reading a real dataset through a fixture."""
    for item in items:
        if item.get_closest_marker("realdata") or REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
