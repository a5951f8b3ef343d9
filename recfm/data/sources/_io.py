"""Small helpers shared by the source loaders: opening (gzip-aware) and line iteration."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator


def open_text(path: Path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace", newline="")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without trailing newline), skipping blank lines."""
    with open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield n, line


def find_one(directory: Path, patterns: list[str]) -> Path | None:
    """First file in ``directory`` matching any glob pattern, in pattern order."""
    for pat in patterns:
        hits = sorted(Path(directory).glob(pat))
        if hits:
            return hits[0]
    return None
