"""Textual item IDs as strings: normalisation, the numeric-suffix rule that makes IDs unique,
IDGenRec's ID table file, and extractive (TF-IDF salient word) IDs."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

_PUNCT = set(string.punctuation) | set("\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00b7\u2022")


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P")


def normalize_id(text: str) -> str:
    """NFKC, lowercase, whitespace runs to one space, punctuation stripped at both ends.
    ``""`` means the ID is invalid (empty, or punctuation only)."""
    s = " ".join(unicodedata.normalize("NFKC", text or "").lower().split())
    i, j = 0, len(s)
    while i < j and (_is_punct(s[i]) or s[i].isspace()):
        i += 1
    while j > i and (_is_punct(s[j - 1]) or s[j - 1].isspace()):
        j -= 1
    return s[i:j]


def with_suffix(base: str, taken: set[str], start: int = 2) -> str:
    """The first of ``"base 2"``, ``"base 3"``, ... not in ``taken`` (``base`` normalised; an empty
    base becomes ``"item"``)."""
    base = normalize_id(base) or "item"
    n = start
    while f"{base} {n}" in taken:
        n += 1
    return f"{base} {n}"


def make_unique(ids: Sequence[str], taken: Iterable[str] = (), start: int = 2) -> tuple[list[str], int]:
    """Normalise ``ids`` and make them unique in order with the suffix rule: the first holder of an
    ID keeps it, later duplicates (and empty IDs, base ``"item"``) get ``"<id> 2"``, ``"<id> 3"``,
    ... Returns the IDs and how many got a suffix. ``taken``: IDs already in use elsewhere."""
    used = set(taken)
    out, n_suffixed = [], 0
    for x in ids:
        x = normalize_id(x)
        if not x or x in used:
            x = with_suffix(x, used, start)
            n_suffixed += 1
        used.add(x)
        out.append(x)
    return out, n_suffixed


_FIELD = re.compile(r"(?:^|;)\s*[A-Za-z_][\w ]{0,30}?:\s")
_WORD = re.compile(r"[^\W_]+(?:['\u2019&.+-][^\W_]+)*")
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or s that the this to with without "
    "your you our my all per".split()
)


def _strip_fields(text: str) -> str:
    """``"title: foo; brand: bar"`` -> ``"foo ; bar"``: field names are not content."""
    return _FIELD.sub(" ; ", text or "")


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", _strip_fields(text)).lower())


def _fallback_base(text: str, words: int = 5) -> str:
    return normalize_id(" ".join(_WORD.findall(_strip_fields(text).lower())[:words])) or "item"


def extractive_ids(texts: Sequence[str], max_words: int = 4, *, stopwords: Iterable[str] = STOPWORDS) -> list[str]:
    """Salient words of each text by TF-IDF over the catalog (``texts``), the ``max_words`` best
    (ties: earlier word) kept in their original order; field names (``title:``) and stopwords
    dropped (stopwords only if something else is left). Duplicates are possible: these are
    warm-start targets; ``make_unique`` if you need IDs."""
    stop = set(stopwords)
    docs = [_words(t) for t in texts]
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)
    out = []
    for d in docs:
        content = [w for w in d if w not in stop] or d
        tf = Counter(content)
        first: dict[str, int] = {}
        for pos, w in enumerate(content):
            first.setdefault(w, pos)
        score = {w: tf[w] * (math.log((1 + n) / (1 + df[w])) + 1.0) for w in tf}
        best = sorted(score, key=lambda w: (-score[w], first[w]))[:max_words]
        out.append(normalize_id(" ".join(sorted(best, key=first.__getitem__))))
    return out


def read_id_table(path: str | Path) -> dict[str, str]:
    """``ITEM_ID textual id words`` per line (IDGenRec's ``item_initial_ids.txt``); blank lines
    skipped; a repeated ITEM_ID keeps its first line; IDs normalised (may be ``""``)."""
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts and parts[0] not in table:
                table[parts[0]] = normalize_id(parts[1] if len(parts) > 1 else "")
    return table
