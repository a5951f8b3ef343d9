"""Offline recommendations for every user of a run's dataset, streamed to Parquet or CSV.

    summary = recommend_all_users("runs/ml1m-sasrec", "recs.parquet", k=20)

Each user is given their WHOLE known sequence, oldest first, as the history (validation and test
items included): the answer is what comes next, the list a product would show now. (Offline
evaluation instead holds the last item out; that is ``recfm evaluate``, not this.) With
``exclude_history`` no item of that sequence is recommended.

Users go through the model's ``recommend`` in batches of ``batch_size``; each batch is written as
its own row group (Parquet) or block of lines (CSV) at once, so the table is never held in
memory. The file appears under its name only when complete (a temporary file is renamed).
Columns: ``user`` (the dataset's user id), ``rank`` (1 = best), ``item`` (the dataset's item id),
``score`` (the model's score, higher = better; its scale depends on the model).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from recfm.runs import RunError

SCHEMA = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()), ("score", pa.float32())])
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class _Writer:
    """Parquet (ParquetWriter, one row group per batch) or CSV (pyarrow's streaming CSVWriter)."""

    def __init__(self, path: str, fmt: str):
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._w = pq.ParquetWriter(path, SCHEMA, compression="zstd")
        else:
            import pyarrow.csv as pacsv

            self._w = pacsv.CSVWriter(path, SCHEMA)

    def write(self, table: pa.Table) -> None:
        self._w.write_table(table)

    def close(self) -> None:
        self._w.close()


def output_format(output: Path) -> str:
    fmt = FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise RunError(f"-o {output}: the file must end in .parquet or .csv")
    return fmt


def recommend_all_users(
    run_dir: Path,
    output: Path,
    k: int = 20,
    exclude_history: bool = False,
    batch_size: int = 256,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    allow_data_change: bool = False,
) -> dict:
    """Top-``k`` items for every user of the run's dataset after their whole sequence, written to
    ``output`` (.parquet or .csv) batch by batch. Returns a summary (users, rows, file)."""
    from recfm.runs import load_run

    output = Path(output)
    if output.is_dir():
        raise RunError(f"-o {output} is a folder; give a file name ending in .parquet or .csv")
    fmt = output_format(output)
    if k < 1 or batch_size < 1:
        raise RunError(f"k and batch_size must be at least 1 (got k={k}, batch_size={batch_size})")
    run, data, model = load_run(Path(run_dir), allow_data_change=allow_data_change)
    kk = min(k, data.n_items)
    users = [u for u in range(data.n_users) if data.offsets[u + 1] > data.offsets[u]]
    user_ids = np.asarray(data.user_ids, dtype=object)
    item_ids = np.asarray(["", *data.item_ids], dtype=object)  # index 0: padding, never written
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.tmp-{os.getpid()}-", dir=output.parent)
    os.close(fd)
    advance = progress("recommending", len(users)) if progress else None
    rows = 0
    try:
        writer = _Writer(tmp, fmt)
        try:
            for lo in range(0, len(users), batch_size):
                batch = users[lo:lo + batch_size]
                histories = [data.sequence(u) for u in batch]
                exclude = [set(h.tolist()) for h in histories] if exclude_history else None
                top = model.recommend(histories, kk, exclude=exclude)
                items = np.asarray(top.items, dtype=np.int64)[:, :kk]
                scores = np.asarray(top.scores, dtype=np.float32)[:, :kk]
                keep = items > 0  # rows may end in padding when fewer than k items are allowed
                b_idx, r_idx = np.nonzero(keep)
                table = pa.table({
                    "user": pa.array(user_ids[np.asarray(batch)[b_idx]].tolist(), pa.string()),
                    "rank": pa.array((r_idx + 1).astype(np.int32)),
                    "item": pa.array(item_ids[items[keep]].tolist(), pa.string()),
                    "score": pa.array(scores[keep]),
                }, schema=SCHEMA)
                writer.write(table)
                rows += table.num_rows
                if advance:
                    advance(len(batch))
        finally:
            writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"run": str(run_dir), "model": run.model["name"], "dataset": data.name, "users": len(users),
            "skipped_users": data.n_users - len(users), "k": kk, "rows": rows,
            "history": "the whole known sequence (what comes next)", "exclude_history": exclude_history,
            "output": str(output), "format": fmt}
