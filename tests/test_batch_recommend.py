"""`recfm recommend --all-users`: every user's top k after their whole sequence, streamed to Parquet/CSV."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import random_sequences
from typer.testing import CliRunner

from recfm.batch import recommend_all_users
from recfm.cli import app
from recfm.data.registry import load_dataset
from recfm.runs import RunError, train_run
from recfm.serve.service import recommend_items

runner = CliRunner()
COMMON = ["prep.user_core=2", "prep.item_core=0"]


def invoke(*args):
    return runner.invoke(app, ["--quiet", *map(str, args)])


def one_error_line(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    for w in words:
        assert w in " ".join(result.output.split()), (w, result.output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    env = pytest.MonkeyPatch()  # a private cache for the module's runs, restored afterwards
    env.setenv("RECFM_CACHE_DIR", str(root / "cache"))
    folder = random_sequences(root / "shop", n_users=45, n_items=15, length=8)
    train_run("pop", str(folder), root / "pop", overrides=COMMON)
    train_run("sasrec", str(folder), root / "sasrec", overrides=[
        *COMMON, "epochs=1", "batch_size=8", "hidden_size=16", "num_layers=1", "show_progress=false", "num_threads=1"])
    data = load_dataset(str(folder), use_cache=False)
    yield {"root": root, "pop": root / "pop", "sasrec": root / "sasrec", "data": data}
    env.undo()


def _sequences(data) -> dict[str, list[str]]:
    return {u: [data.item_ids[i - 1] for i in data.sequence(n)] for n, u in enumerate(data.user_ids)}


def test_parquet_has_every_user_top_k_after_the_whole_sequence(runs, tmp_path):
    out = tmp_path / "recs.parquet"
    result = invoke("recommend", "--run", runs["sasrec"], "--all-users", "--k", 5, "-o", out, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    assert "wrote 225 recommendations (45 users, top 5" in " ".join(result.output.split())
    f = pq.ParquetFile(out)
    assert f.schema_arrow == pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()),
                                        ("score", pa.float32())])
    assert f.metadata.num_row_groups == math.ceil(45 / 16)  # streamed: one row group per batch of users
    table = f.read().to_pylist()
    data = runs["data"]
    assert [r["user"] for r in table[::5]] == data.user_ids  # every user, in dataset order
    assert all([r["rank"] for r in table[i:i + 5]] == [1, 2, 3, 4, 5] for i in range(0, len(table), 5))
    assert all(table[i]["score"] >= table[i + 1]["score"] for i in range(len(table) - 1) if table[i + 1]["rank"] > 1)
    assert {r["item"] for r in table} <= set(data.item_ids)
    # the same answer as one user at a time through the same seam, from their WHOLE sequence (not held out)
    seqs = _sequences(data)
    for user in data.user_ids[:3]:
        one = recommend_items(runs["sasrec"], seqs[user], k=5)
        assert [r["item_id"] for r in one["recommendations"]] == [r["item"] for r in table if r["user"] == user]


def test_csv_output_and_exclude_history(runs, tmp_path):
    out = tmp_path / "recs.csv"
    result = invoke("recommend", "--run", runs["pop"], "--all-users", "-k", 12, "-o", out, "--exclude-history")
    assert result.exit_code == 0, result.output
    rows = pacsv.read_csv(out).to_pylist()
    assert set(rows[0]) == {"user", "rank", "item", "score"}
    seqs = _sequences(runs["data"])
    assert all(str(r["item"]) not in seqs[str(r["user"])] for r in rows)  # never an item of the user's sequence
    by_user: dict[str, list[int]] = {}
    for r in rows:
        by_user.setdefault(str(r["user"]), []).append(r["rank"])
    for user, ranks in by_user.items():  # fewer than k left: no padding rows, ranks still 1..n
        assert ranks == list(range(1, len(ranks) + 1))
        assert len(ranks) == min(12, 15 - len(set(seqs[user])))
    assert len(by_user) == 45


def test_library_progress_and_k_above_the_catalog(runs, tmp_path):
    calls = []

    def progress(description, total):
        calls.append(("start", total))
        return lambda n: calls.append(("advance", n))

    summary = recommend_all_users(runs["pop"], tmp_path / "r.parquet", k=100, batch_size=20, progress=progress)
    assert summary["k"] == 15 and summary["users"] == 45 and summary["rows"] == 45 * 15
    assert calls[0] == ("start", 45) and sum(n for kind, n in calls[1:]) == 45 and len(calls) == 1 + 3
    assert "whole known sequence" in summary["history"]


def test_errors_are_one_line(runs, tmp_path):
    one_error_line(invoke("recommend", "--run", runs["pop"], "--all-users"), "-o FILE")
    one_error_line(invoke("recommend", "--run", runs["pop"], "-o", tmp_path / "r.parquet", "--user", "u1"), "--all-users")
    one_error_line(invoke("recommend", "--run", runs["pop"], "--all-users", "-o", tmp_path / "r.parquet", "--user", "u1"),
                   "neither --history nor --user")
    one_error_line(invoke("recommend", "--run", runs["pop"], "--all-users", "-o", tmp_path / "r.txt"), ".parquet or .csv")
    one_error_line(invoke("recommend", "--run", runs["pop"], "--all-users", "-o", tmp_path), "folder")
    one_error_line(invoke("recommend", "--run", tmp_path / "nope", "--all-users", "-o", tmp_path / "r.parquet"),
                   "not a run directory")
    assert not list(tmp_path.glob("*.parquet"))


def test_a_failure_midway_leaves_no_partial_file(runs, tmp_path, monkeypatch):
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"the previous file")
    import recfm.runs as runs_module

    real = runs_module.load_run

    def failing_load_run(run_dir, *a, **kw):
        run, data, model = real(run_dir, *a, **kw)
        calls = {"n": 0}
        recommend = model.recommend

        def flaky(histories, k, exclude=None):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("out of memory")
            return recommend(histories, k, exclude=exclude)

        model.recommend = flaky
        return run, data, model

    monkeypatch.setattr(runs_module, "load_run", failing_load_run)
    with pytest.raises(RuntimeError, match="out of memory"):
        recommend_all_users(runs["pop"], out, k=5, batch_size=10)
    assert out.read_bytes() == b"the previous file"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.parquet"]  # no temporary left behind


def test_library_refuses_bad_arguments(runs, tmp_path):
    with pytest.raises(RunError, match="at least 1"):
        recommend_all_users(runs["pop"], tmp_path / "r.csv", k=0)
    with pytest.raises(RunError, match=".parquet or .csv"):
        recommend_all_users(runs["pop"], tmp_path / "r.json")
