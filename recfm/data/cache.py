"""Cache of prepared datasets: Parquet folders keyed by a hash of source files and config.

Writes go to a temporary sibling folder renamed into place, so an interrupted prepare
never leaves a half-written cache entry behind; a temporary left by a killed writer is removed
by the next write beside it. Files and folders get the user's umask (0644 / 0755 by default),
not the 0600 / 0700 of ``tempfile``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Remove ``target``'s temporaries whose writer process is gone (killed mid-write)."""
    parent = Path(target).parent
    if not parent.is_dir():
        return
    for tmp in parent.glob(f".{glob.escape(Path(target).name)}.tmp-*-*"):
        pid = tmp.name[len(f".{Path(target).name}.tmp-"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it atomically becomes ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # a concurrent writer won the race: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
