"""Source formats: one module each, all returning a RawDataset. Explicit table, no magic registry.

Detection tries the formats in table order on a folder (or a single file for tabular data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recfm.data.schema import RawDataset
from recfm.data.sources import movielens, p5


@dataclass(frozen=True)
class SourceFormat:
    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., RawDataset]


FORMATS: dict[str, SourceFormat] = {
    f.name: f
    for f in [
        SourceFormat("recbole-atomic", "RecBole atomic files: NAME.inter (+ NAME.item)", movielens.detect_atomic, movielens.load_atomic),
        SourceFormat("p5-text", "P5/IDGenRec: user_sequence.txt + item text file", p5.detect, p5.load),
    ]
}


class UnknownFormatError(ValueError):
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
