"""Cache of prepared datasets: Parquet folders keyed by a hash of source files and config.

Entries are written with :func:`recfm.atomic.atomic_directory`, so an interrupted prepare never
leaves a half-written cache entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_SAMPLE = 1 << 20  # bytes hashed from each end of very large files


def cache_root() -> Path:
    return Path(os.environ.get("RECFM_CACHE_DIR") or Path.home() / ".cache" / "recfm")


def fingerprint_files(paths: list[Path]) -> str:
    """Content hash of the source files (head and tail only for files over 64 MiB, plus size)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        if not p.is_file():
            continue
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\0".encode())
        with open(p, "rb") as fh:
            if size <= 64 * _SAMPLE:
                for chunk in iter(lambda: fh.read(_SAMPLE), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(_SAMPLE))
                fh.seek(size - _SAMPLE)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def cache_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
