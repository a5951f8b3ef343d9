"""The published RecFound dataset files, read into recfm task records."""

from __future__ import annotations

import json
from pathlib import Path

from recfm.multitask.records import EmbRecord, GenRecord, Record


def read_recfound_jsonl(path: str | Path) -> list[Record]:
    """Records of the published RecFound dataset (``Generative_dataset_*.jsonl``,
    ``Embedding_dataset_*.jsonl``; a JSON array file works too).

    Generative lines are ``{"text": [prompt, answer, (prompt, answer, ...)], "task": ...}``: the
    options sit inside the prompt and the answer is an option letter, yes/no or free text; earlier
    turns of a multi-turn line are kept in ``input``. Embedding lines are GritLM style
    ``{"query": [instruction, text], "pos": [[instruction, text], ...], "neg": [...], "task": ...}``
    (a positive or negative given as a list of texts contributes its first text / all texts).
    """
    path = Path(path)
    raw = path.read_text()
    try:
        rows = json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON lines nor a JSON array ({e})") from None
    out: list[Record] = []
    for n, row in enumerate(rows, 1):
        where = f"{path}: record {n}"
        try:
            out.append(_recfound_record(row, where))
        except (TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{where}: malformed RecFound record ({type(e).__name__}: {e})") from None
    return out


def _recfound_record(row, where: str) -> Record:
    """One published RecFound record (see :func:`read_recfound_jsonl`)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a record must be a JSON object, not {type(row).__name__}")
    task = row.get("task")
    if not isinstance(task, str):
        raise ValueError(f"{where}: no 'task' string")
    if "text" in row:
        turns = row["text"]
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            raise ValueError(f"{where}: 'text' must list user and assistant turns in pairs")
        history = "\n\n".join(str(t) for t in turns[:-2])
        prompt = f"{history}\n\n{turns[-2]}" if history else str(turns[-2])
        return GenRecord(task, "", prompt, str(turns[-1]))
    if "query" in row:
        query, pos = row["query"], row.get("pos") or []
        if not (isinstance(query, list) and len(query) == 2) or not pos:
            raise ValueError(f"{where}: embedding records need 'query': [instruction, text] and a 'pos' list")

        def texts(entry) -> list[str]:
            value = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]

        negatives = [t for entry in row.get("neg") or [] for t in texts(entry)]
        return EmbRecord(task, str(query[0]), str(query[1]), texts(pos[0])[0], negatives)
    raise ValueError(f"{where}: neither 'text' (generative) nor 'query' (embedding)")
