"""Source formats: one module each, all returning a RawDataset. Explicit table, no magic registry.

Detection tries the formats in table order on a folder (or a single file for tabular data):
layouts recognised by fixed file names first, content-sniffed JSON layouts next, and the
generic tables last, so that a more specific format always wins.

Every loader in the table is wrapped so that a format error met in a gzipped file whose
gzip stream is damaged is reported as the damaged stream (file, line, byte): a corrupt stream
can inflate to garbage lines before the gzip check fails at its end.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from recfm.errors import RecfmError
from recfm.data.schema import DataFormatError, RawDataset
from recfm.data.sources import _io, amazon, goodreads, grouplens, hm, mind, movielens, p5, tabular, yelp


@dataclass(frozen=True)
class SourceFormat:
    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., RawDataset]
    domain: str | None = None  # what a folder of this format is about, where the format says (the benchmark's domains)


def _gzip_checked(load: Callable[..., RawDataset]) -> Callable[..., RawDataset]:
    """``load``, with a DataFormatError in a damaged gzip file replaced by the gzip error."""

    @functools.wraps(load)
    def checked(*args, **kwargs) -> RawDataset:
        try:
            return load(*args, **kwargs)
        except DataFormatError as e:
            damaged = _io.damaged_gzip(e.path) if e.path is not None and _io.is_gzip(e.path) else None
            if damaged is None:
                raise
            raise damaged from None

    return checked


FORMATS: dict[str, SourceFormat] = {
    f.name: replace(f, load=_gzip_checked(f.load))
    for f in [
        SourceFormat("recbole-atomic", "RecBole atomic files: NAME.inter (+ NAME.item)", movielens.detect_atomic, movielens.load_atomic),
        SourceFormat("p5-text", "P5/IDGenRec: user_sequence.txt + item text file", p5.detect, p5.load),
        SourceFormat(
            "grouplens",
            "MovieLens as downloaded from GroupLens: ratings.dat + movies.dat (ML-1M/10M), "
            "u.data + u.item (ML-100K), or ratings.csv + movies.csv (ML-20M/25M/latest)",
            grouplens.detect, grouplens.load, "movies",
        ),
        SourceFormat(
            "yelp", "Yelp Open Dataset: yelp_academic_dataset_review.json (+ _business.json)", yelp.detect, yelp.load, "local businesses",
        ),
        SourceFormat("mind", "Microsoft News (MIND): behaviors.tsv + news.tsv", mind.detect, mind.load, "news"),
        SourceFormat(
            "goodreads", "UCSD Goodreads: goodreads_interactions_<genre>.json(.gz) (+ goodreads_books_<genre>.json(.gz))",
            goodreads.detect, goodreads.load, "books",
        ),
        SourceFormat(
            "hm", "H&M Personalized Fashion (Kaggle): transactions_train.csv + articles.csv", hm.detect, hm.load, "fashion",
        ),
        SourceFormat(
            "amazon-2023", "Amazon reviews 2023: <Category>.jsonl(.gz) + meta_<Category>.jsonl(.gz)",
            amazon.detect_2023, amazon.load_2023,
        ),
        SourceFormat(
            "amazon-2014",
            "Amazon reviews 2014/2018: reviews_<Category>[_5].json(.gz), <Category>[_5].json(.gz) "
            "+ meta_<Category>.json(.gz)",
            amazon.detect_2014, amazon.load_2014,
        ),
        SourceFormat(
            "tabular",
            "a .csv/.tsv/.parquet table, or a folder with interactions.(csv|tsv|parquet) (+ items.*); "
            "columns mapped by user_col/item_col/time_col/... options",
            tabular.detect, tabular.load,
        ),
    ]
}


class UnknownFormatError(RecfmError, ValueError):
    pass


def detect_format(path: str | Path) -> SourceFormat:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    listing = "\n".join(f"  - {f.name}: {f.description}" for f in FORMATS.values())
    raise UnknownFormatError(f"{path}: not a recognised dataset layout. Supported formats:\n{listing}")


def load_path(path: str | Path, format: str | None = None, **options) -> RawDataset:
    """Load a folder or file: the format by name, or detected with :func:`detect_format`.

    ``options`` go to the format's loader (``name=``; tabular column mapping such as
    ``user_col=``; Amazon ``category=``; Goodreads ``genre=``).
    """
    path = Path(path)
    if format is None:
        fmt = detect_format(path)
    elif format in FORMATS:
        fmt = FORMATS[format]
    else:
        raise UnknownFormatError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    params = inspect.signature(fmt.load).parameters
    unknown = [k for k in options if k not in params or k == "path"]
    if unknown:
        accepted = [k for k in params if k != "path"]
        raise TypeError(f"format {fmt.name!r} takes no option(s) {unknown}; it accepts {accepted}")
    return fmt.load(path, **options)
