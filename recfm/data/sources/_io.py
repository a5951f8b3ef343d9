"""Small helpers shared by the source loaders: opening (gzip-aware), line iteration, and the two
ways a file can be damaged below its format, each turned into a DataFormatError naming the file
and line: bytes that are not UTF-8 (decoded strictly, never replaced, so that ids which differ
in one byte never merge) and a truncated or corrupt gzip stream."""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path
from typing import Iterator

from recfm.data.schema import DataFormatError

GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
"""What reading a damaged gzip file raises (truncated: EOFError; corrupt: zlib.error; bad header or CRC: BadGzipFile)."""

_BREAKS = re.compile(rb"\r\n|\r|\n")  # line ends as text mode splits them


def is_gzip(path: Path) -> bool:
    return Path(path).name.lower().endswith(".gz")


def finite(value: float) -> float:
    """``value`` if it is a finite number; ValueError for NaN and +-inf (which float() accepts)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return value


# ---------------------------------------------------------------- diagnosis (only on the error path)

_BLOCK = 1 << 14


def gzip_error(path: Path) -> DataFormatError:
    """Where the gzip stream of ``path`` stops decoding: compressed byte, decompressed bytes and line."""
    path = Path(path)
    size = path.stat().st_size
    done = newlines = 0  # decompressed bytes and line ends before the break
    offset = 0  # compressed bytes consumed
    with open(path, "rb") as fh:
        data = fh.read(_BLOCK)
        while data.strip(b"\0"):  # gzip allows zero padding after the last member
            member, start = zlib.decompressobj(wbits=31), offset  # one gzip member (a file may hold several)
            while True:
                try:
                    out = member.decompress(data)
                except zlib.error as e:
                    if offset == start and "header" in str(e):
                        what = f"not gzip data: no gzip header at byte {offset} of {size}"
                    else:
                        what = f"corrupt: the compressed stream breaks at about byte {offset} of {size}, after {done} decompressed bytes"
                    return DataFormatError(path, newlines + 1, f"a complete gzip file ({what})")
                done += len(out)
                newlines += out.count(b"\n")
                if member.eof:
                    offset += len(data) - len(member.unused_data)
                    data = member.unused_data or fh.read(_BLOCK)
                    break
                offset += len(data)
                data = fh.read(_BLOCK)
                if not data:
                    what = f"truncated: the compressed stream breaks off at byte {size}, the end of the file, after {done} decompressed bytes"
                    return DataFormatError(path, newlines + 1, f"a complete gzip file ({what})")
    return DataFormatError(path, None, "a complete gzip file (it cannot be read)")


def utf8_error(path: Path) -> DataFormatError:
    """The first line of ``path`` that is not valid UTF-8, with the offending byte and column."""
    path = Path(path)
    if is_gzip(path) and (damaged := damaged_gzip(path)) is not None:
        return damaged  # garbage from a damaged stream: report the stream, not the bytes
    line = 1
    with raw_open(path) as fh:
        for raw in fh:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line += len(_BREAKS.findall(raw, 0, e.start))
                column = e.start - max(raw.rfind(b"\n", 0, e.start), raw.rfind(b"\r", 0, e.start))
                text = _BREAKS.split(_BREAKS.split(raw[: e.start])[-1] + raw[e.start :])[0].decode("utf-8", errors="replace")
                expected = f"UTF-8 text (byte 0x{raw[e.start]:02x} at column {column} is not UTF-8; re-encode the file as UTF-8)"
                return DataFormatError(path, line, expected, text)
            line += len(_BREAKS.findall(raw))
    return DataFormatError(path, None, "UTF-8 text")


def damaged_gzip(path: Path) -> DataFormatError | None:
    """The DataFormatError for the gzip file ``path`` if its stream is damaged (read to the end), else None."""
    try:
        with _open_raw(Path(path)) as fh:
            while fh.read(1 << 20):
                pass
    except GZIP_ERRORS:
        return gzip_error(path)
    except OSError:  # gone or unreadable: nothing to add to the error at hand
        return None
    return None


def read_error(path: Path, error: Exception) -> DataFormatError:
    """The DataFormatError for a damaged gzip stream or bytes that are not UTF-8 met reading ``path``."""
    return utf8_error(path) if isinstance(error, UnicodeDecodeError) else gzip_error(path)


READ_ERRORS = (*GZIP_ERRORS, UnicodeDecodeError)


# ---------------------------------------------------------------- opening and reading


class _Checked:
    """A file object whose reads raise DataFormatError (file and line) for damaged content."""

    def __init__(self, path: Path, fh):
        self._path, self._fh = path, fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def close(self):
        self._fh.close()

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._fh)
        except READ_ERRORS as e:
            raise read_error(self._path, e) from None

    def readline(self, *args):
        try:
            return self._fh.readline(*args)
        except READ_ERRORS as e:
            raise read_error(self._path, e) from None

    def read(self, *args):
        try:
            return self._fh.read(*args)
        except READ_ERRORS as e:
            raise read_error(self._path, e) from None


def _open_raw(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def _open_text(path: Path):
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def raw_open(path: Path) -> _Checked:
    """The bytes of a (possibly gzipped) file; a damaged gzip stream raises DataFormatError."""
    return _Checked(Path(path), _open_raw(Path(path)))


def open_text(path: Path) -> _Checked:
    """Strict UTF-8 text of a (possibly gzipped) file: bytes that are not UTF-8 and damaged gzip
    streams raise DataFormatError with the file and line, never a replacement character."""
    return _Checked(Path(path), _open_text(Path(path)))


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of a file."""
    with raw_open(path) as fh:
        return fh.read()


def check_text(path: Path) -> None:
    """Reads all of ``path``: DataFormatError at the first damaged line, else nothing."""
    with open_text(path) as fh:
        while fh.read(1 << 20):
            pass


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without trailing newline), skipping blank lines."""
    path = Path(path)
    with _open_text(path) as fh:
        try:
            for n, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield n, line
        except READ_ERRORS as e:  # from reading fh (nothing else in the loop raises these)
            raise read_error(path, e) from None


def raw_lines(path: Path) -> Iterator[bytes]:
    """The lines of a (possibly gzipped) file as bytes, split on b"\\n" only, line ends kept."""
    path = Path(path)
    with _open_raw(path) as fh:
        try:
            yield from fh
        except GZIP_ERRORS:
            raise gzip_error(path) from None


def find_one(directory: Path, patterns: list[str]) -> Path | None:
    """First file in ``directory`` matching any glob pattern, in pattern order."""
    for pat in patterns:
        hits = sorted(Path(directory).glob(pat))
        if hits:
            return hits[0]
    return None
