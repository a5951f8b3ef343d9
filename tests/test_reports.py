"""`recfm compare` and `recfm train --seeds`: run column, protocol lines, sampled splits, exports, seeds."""

from __future__ import annotations

import csv
import io
import json

import pytest
from helpers import random_sequences
from typer.testing import CliRunner

from recfm.cli import app
from recfm.reports import (ReportError, aggregate_seeds, compare_report, parse_seeds, protocol_line, read_entry,
                           render, train_seeds)
from recfm.runs import train_run

runner = CliRunner()
COMMON = ["prep.user_core=2", "prep.item_core=0"]
SASREC = [*COMMON, "epochs=2", "batch_size=8", "hidden_size=16", "num_layers=1", "show_progress=false",
          "num_threads=1", "patience=5"]


def invoke(*args):
    return runner.invoke(app, ["--quiet", *map(str, args)])


def one_error_line(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    text = " ".join(result.output.split())
    for w in words:
        assert w in text, (w, result.output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Pop and SASRec on one tiny random dataset, a sampled re-score of SASRec, and SASRec over two seeds."""
    root = tmp_path_factory.mktemp("reports")
    env = pytest.MonkeyPatch()  # a private cache for the module's runs, restored afterwards
    env.setenv("RECFM_CACHE_DIR", str(root / "cache"))
    folder = random_sequences(root / "shop", n_users=40, n_items=15, length=8)
    train_run("pop", str(folder), root / "pop", overrides=COMMON)
    train_run("sasrec", str(folder), root / "sasrec", overrides=SASREC)
    result = invoke("evaluate", "--run", root / "sasrec", "--max-cases", 10, "-o", root / "sampled.json")
    assert result.exit_code == 0, result.output
    summary = train_seeds("sasrec", str(folder), root / "seeds", [0, 1], overrides=SASREC)
    yield {"root": root, "folder": folder, "pop": root / "pop", "sasrec": root / "sasrec",
           "sampled": root / "sampled.json", "seeds": root / "seeds", "summary": summary}
    env.undo()


# -- the table ----------------------------------------------------------------------------------
def test_compare_has_a_run_column_valid_and_test_rows_and_one_protocol_line(runs):
    result = invoke("compare", runs["pop"], runs["sasrec"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "valid and test metrics of 2 runs" in out and "test metrics (leave-one-out" not in out
    assert "┃ run " in out and "┃ users ┃" in out
    assert str(runs["pop"].name) in out and str(runs["sasrec"].name) in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert sum("│ valid │" in line for line in rows) == 2 and sum("│ test  │" in line for line in rows) == 2
    assert [line for line in out.splitlines() if line.startswith("protocol")] == [
        line for line in out.splitlines() if line.startswith("protocol: ")]
    assert "MRR within the top 20" in out and "mrr@20" in out
    assert "N of M users" not in out  # nothing sampled here


def test_different_protocols_are_refused_naming_the_keys_unless_mixed(runs):
    one_error_line(invoke("compare", runs["pop"], runs["sampled"]), "different protocols", "cases", "--mixed")
    result = invoke("compare", "--mixed", runs["pop"], runs["sampled"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("protocol A (") for line in lines) == 1
    assert sum(line.startswith("protocol B (") for line in lines) == 1
    assert "seeded sample of at most 10 per split" in result.output
    text = " ".join(result.output.split())
    assert "10 of 37" in text or "10 of" in text  # the sampled rows say N of M users
    assert "N of M users: sampled evaluation" in text


def test_differing_mrr_depth_is_a_protocol_difference(runs, tmp_path):
    metrics = json.loads((runs["pop"] / "metrics.json").read_text())
    deeper = {**metrics, "protocol": {**metrics["protocol"], "mrr_depth": 100}}
    (tmp_path / "deep.json").write_text(json.dumps(deeper))
    one_error_line(invoke("compare", runs["pop"], tmp_path / "deep.json"), "mrr_depth", "20", "100")
    report = compare_report([runs["pop"], tmp_path / "deep.json"], mixed=True)
    assert report.mrr_header() == "mrr"  # no single depth to put in the header
    assert any("MRR within the top 100" in line for line in render(report, "md").splitlines())


def test_sampled_split_of_one_run_says_n_of_m(runs):
    report = compare_report([runs["sampled"]])
    text = render(report, "md")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "sasrec" in line]
    total = json.loads(runs["sampled"].read_text())["test"]["cases_in_split"]
    assert rows and all(f"10 of {total}" in r for r in rows)
    doc = json.loads(render(report, "json"))
    assert doc["rows"][0]["users"] == 10 and doc["rows"][0]["users_in_split"] == total


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_exports_to_stdout_and_to_a_file(runs, tmp_path, fmt):
    result = invoke("compare", runs["pop"], runs["sasrec"], "--format", fmt)
    assert result.exit_code == 0, result.output
    text = result.output
    target = tmp_path / f"table.{fmt}"
    written = invoke("compare", runs["pop"], runs["sasrec"], "-o", target)  # format from the suffix
    assert written.exit_code == 0, written.output
    assert target.read_text() == text
    metrics = json.loads((runs["sasrec"] / "metrics.json").read_text())
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["model"], r["split"]) for r in rows] == [("pop", "valid"), ("pop", "test"),
                                                             ("sasrec", "valid"), ("sasrec", "test")]
        assert float(rows[3]["ndcg@10"]) == metrics["test"]["ndcg@10"]  # unrounded
        assert rows[3]["run"] == str(runs["sasrec"]) and "full ranking" in rows[3]["protocol"]
    elif fmt == "json":
        doc = json.loads(text)
        assert len(doc["protocols"]) == 1 and doc["protocols"][0]["protocol"] == metrics["protocol"]
        assert doc["rows"][3]["metrics"]["mrr"] == metrics["test"]["mrr"]
    else:
        assert "| run | model | dataset | split |" in text and "protocol: " in text
        assert f"| {metrics['test']['ndcg@10']:.4f} |" in text


def test_format_errors_are_one_line(runs, tmp_path):
    one_error_line(invoke("compare", runs["pop"], "-f", "xml"), "--format", "md, csv or json")
    one_error_line(invoke("compare", runs["pop"], "-o", tmp_path / "table.txt"), "--format")
    one_error_line(invoke("compare", runs["pop"], "-f", "table", "-o", tmp_path / "t.md"), "terminal")
    one_error_line(invoke("compare", runs["pop"], "-f", "md", "-o", tmp_path), "folder")


@pytest.mark.parametrize("content, words", [
    ('{"dataset": "x", "model": "pop", "protocol": {"ks": [5', ["not valid JSON", "truncated"]),
    ("", ["is empty"]),
    ("[1, 2, 3]", ["JSON list"]),
    ('{"model": "pop", "protocol": {}}', ["neither valid nor test"]),
    ('{"model": "pop", "test": {"hr@5": "high"}}', ["test.hr@5", "not a number"]),
    ('{"model": "pop", "test": [0.1]}', ["'test'", "not an object"]),
    ('{"model": "pop", "protocol": "full", "test": {"hr@5": 0.1}}', ["'protocol'"]),
])
def test_a_damaged_metrics_json_is_one_error_line(runs, tmp_path, content, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(content)
    one_error_line(invoke("compare", runs["pop"], run), str(run / "metrics.json"), *words)


def test_not_a_run_and_binary_files_are_one_error_line(runs, tmp_path):
    one_error_line(invoke("compare", tmp_path / "nothing"), "does not exist")
    (tmp_path / "empty").mkdir()
    one_error_line(invoke("compare", tmp_path / "empty"), "no metrics.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    one_error_line(invoke("compare", tmp_path / "bin.json"), "not UTF-8")


def test_protocol_line_of_an_old_run_without_protocol():
    assert protocol_line({}) == "not recorded in metrics.json"
    assert "exclude_history=true" in protocol_line({"exclude_history": True, "extra": [1, 2]})


def test_train_and_evaluate_tables_keep_working(runs):
    result = invoke("evaluate", "--run", runs["pop"])
    assert result.exit_code == 0, result.output
    assert "protocol: " in result.output and " test " in result.output


# -- seeds --------------------------------------------------------------------------------------
def test_train_seeds_writes_one_run_per_seed_and_seeds_json(runs):
    root, summary = runs["seeds"], runs["summary"]
    assert (root / "seed-0" / "metrics.json").is_file() and (root / "seed-1" / "metrics.json").is_file()
    on_disk = json.loads((root / "seeds.json").read_text())
    assert on_disk == summary and summary["seeds"] == [0, 1] and summary["runs"] == ["seed-0", "seed-1"]
    runs_metrics = [json.loads((root / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    import yaml

    for s in (0, 1):  # the seed reaches the run AND the model's own seed (SASRec's init, order, dropout)
        cfg = yaml.safe_load((root / f"seed-{s}" / "config.yaml").read_text())
        assert cfg["seed"] == s and cfg["model"]["seed"] == s
    assert runs_metrics[0]["training"] != runs_metrics[1]["training"]  # the seeds really differ
    for split in ("valid", "test"):
        for name in ("hr@10", "ndcg@10", "mrr"):
            values = [m[split][name] for m in runs_metrics]
            assert summary[split]["mean"][name] == pytest.approx(sum(values) / 2, abs=1e-6)
            assert summary[split]["std"][name] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-6)
        assert summary[split]["cases"] == runs_metrics[0][split]["cases"]


def test_compare_shows_mean_std_for_a_seeds_folder_and_for_its_seed_runs(runs):
    folder = invoke("compare", runs["seeds"], runs["pop"])
    assert folder.exit_code == 0, folder.output
    assert "±" in folder.output and "seeds" in folder.output and "0,1" in folder.output
    assert "sample standard deviation" in folder.output
    seed_runs = invoke("compare", "-f", "json", runs["seeds"] / "seed-0", runs["seeds"] / "seed-1")
    assert seed_runs.exit_code == 0, seed_runs.output
    doc = json.loads(seed_runs.output)
    assert len(doc["rows"]) == 2 and doc["rows"][0]["seeds"] == [0, 1]  # one mean ± std row per split
    assert doc["rows"][1]["metrics"]["ndcg@10"] == pytest.approx(runs["summary"]["test"]["mean"]["ndcg@10"], abs=1e-6)
    assert doc["rows"][1]["std"]["ndcg@10"] == pytest.approx(runs["summary"]["test"]["std"]["ndcg@10"], abs=1e-6)
    per_seed = json.loads(invoke("compare", "-f", "json", "--per-seed", runs["seeds"] / "seed-0",
                                 runs["seeds"] / "seed-1").output)
    assert len(per_seed["rows"]) == 4 and per_seed["rows"][0]["std"] is None
    csv_text = invoke("compare", "-f", "csv", runs["seeds"]).output
    row = list(csv.DictReader(io.StringIO(csv_text)))[1]
    assert row["seeds"] == "0 1" and float(row["ndcg@10_std"]) == runs["summary"]["test"]["std"]["ndcg@10"]


def test_same_seed_twice_is_not_averaged(runs):
    report = compare_report([runs["sasrec"], runs["sasrec"]])
    assert len(report.entries) == 2 and all(e.seeds is None for e in report.entries)


def test_train_seeds_through_the_cli_and_its_errors(runs, tmp_path):
    folder = runs["folder"]
    out = tmp_path / "pop-seeds"
    result = invoke("train", "pop", "-d", folder, "-o", out, "--seeds", "3,4", *COMMON)
    assert result.exit_code == 0, result.output
    assert "mean ± std over seeds 3,4" in " ".join(result.output.split())
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 4] and summary["test"]["std"]["ndcg@10"] == 0.0  # Pop ignores the seed
    # an existing seeds folder is not replaced silently; --overwrite removes seed runs no longer asked for
    one_error_line(invoke("train", "pop", "-d", folder, "-o", out, "--seeds", "3,4", *COMMON), "--overwrite")
    result = invoke("train", "pop", "-d", folder, "-o", out, "--seeds", "4,5", "--overwrite", *COMMON)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["seed-4", "seed-5", "seeds.json"]
    # --resume keeps the finished seeds and trains the missing ones
    result = invoke("train", "pop", "-d", folder, "-o", out, "--seeds", "4,5,6", "--resume", *COMMON)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [4, 5, 6]

    one_error_line(invoke("train", "pop", "-d", folder, "-o", tmp_path / "a", "--seeds", "0"), "at least two")
    one_error_line(invoke("train", "pop", "-d", folder, "-o", tmp_path / "a", "--seeds", "0,x"), "integers")
    one_error_line(invoke("train", "pop", "-d", folder, "-o", tmp_path / "a", "--seeds", "1,1"), "repeats")
    one_error_line(invoke("train", "pop", "-d", folder, "-o", tmp_path / "a", "--seeds", "0,1", "seed=3"),
                   "conflicts with --seeds")
    one_error_line(invoke("train", "pop", "-d", folder, "-o", runs["pop"], "--seeds", "0,1", "--overwrite"),
                   "single run")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    one_error_line(invoke("train", "pop", "-d", folder, "-o", notes, "--seeds", "0,1", "--overwrite"), "no seed runs")
    assert (notes / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_resume_refuses_a_finished_seed_of_another_config(runs, tmp_path):
    out = tmp_path / "s"
    assert invoke("train", "pop", "-d", runs["folder"], "-o", out, "--seeds", "0,1", *COMMON).exit_code == 0
    one_error_line(invoke("train", "pop", "-d", runs["folder"], "-o", out, "--seeds", "0,1", "--resume",
                          "prep.user_core=3", "prep.item_core=0"), "another configuration")


def test_aggregate_seeds_refuses_runs_that_are_not_seeds_of_one_run(runs):
    pop = json.loads((runs["pop"] / "metrics.json").read_text())
    sas = json.loads((runs["sasrec"] / "metrics.json").read_text())
    with pytest.raises(ReportError, match="differ in model"):
        aggregate_seeds([pop, sas], [0, 1], ["pop", "sasrec"])
    sampled = json.loads(runs["sampled"].read_text())
    with pytest.raises(ReportError, match="protocol"):
        aggregate_seeds([sas, {**sampled, "model": "sasrec"}], [0, 1], ["a", "b"])
    with pytest.raises(ReportError, match="at least two"):
        aggregate_seeds([pop], [0], ["pop"])
    assert parse_seeds(" 0, 1 ,2") == [0, 1, 2]


def test_a_damaged_seeds_json_is_one_error_line(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "seeds.json").write_text('{"kind": "seeds", "model": "x", "test": {"std": {}}}')
    one_error_line(invoke("compare", tmp_path / "s"), "no 'mean'")
    (tmp_path / "s" / "seeds.json").write_text('{"kind": "see')
    with pytest.raises(ReportError, match="not valid JSON"):
        read_entry(tmp_path / "s")
