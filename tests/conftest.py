"""Shared fixtures for the data/evaluation tests. Kept small on purpose."""

from __future__ import annotations

import os

# No test may reach the network: set before any test module imports transformers / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from recfm.data.registry import DatasetNotFoundError, load_dataset, shared_data_root  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core: two workers of two torch threads each on two cores is
    # the oversubscription that slowed torch about 10x here, so every worker computes on one thread.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest, and far faster than two on a busy shared CPU
    (spin-waiting threads made generate 10-20x slower); the thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
