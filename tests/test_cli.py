"""End-to-end through the `recfm` command: run directories, metrics.json shape, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import tiny_shop
from typer.testing import CliRunner

from recfm.cli import app

runner = CliRunner()
METRIC_KEYS = {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"}


@pytest.fixture()
def p5_folder(tmp_path, monkeypatch):
    """A tiny dataset in the P5/IDGenRec text format, as a user would point --dataset at it."""
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    return tiny_shop(tmp_path / "tiny-shop")


def invoke(*args):
    result = runner.invoke(app, ["--quiet", *map(str, args)])
    return result


def test_train_writes_run_directory_with_documented_metrics_shape(p5_folder, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "pop", "--dataset", p5_folder, "--output", run, "user_core=0")
    assert result.exit_code != 0  # 'user_core' is a prep key, not a pop key: must be rejected clearly
    assert "user_core" in result.output

    result = invoke("train", "pop", "--dataset", p5_folder, "--output", run, "prep.user_core=2", "protocol.exclude_history=true")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "tiny-shop" and metrics["model"] == "pop"
    assert METRIC_KEYS <= set(metrics["test"]) and "ndcg@10" in metrics["valid"]
    assert all(k == k.lower() for k in metrics["test"])
    assert metrics["protocol"]["exclude_history"] is True
    assert isinstance(metrics["train_seconds"], float) and metrics["train_seconds"] < 600
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["prep"]["user_core"] == 2 and config["protocol"]["exclude_history"] is True
    assert (run / "train.log").read_text().strip()

    # evaluate reloads the saved model and reproduces the recorded numbers exactly
    result = invoke("evaluate", "--run", run, "--json")
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    for split in ("valid", "test"):
        for k in METRIC_KEYS:
            assert again[split][k] == pytest.approx(metrics[split][k], abs=1e-6)

    # the resolved config.yaml is itself a valid --config
    result = invoke("train", "pop", "--dataset", p5_folder, "--output", tmp_path / "rerun", "--config", run / "config.yaml")
    assert result.exit_code == 0, result.output
    rerun = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    assert rerun["test"]["ndcg@10"] == metrics["test"]["ndcg@10"]


def test_existing_run_is_not_overwritten_silently(p5_folder, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", p5_folder, "-o", run).exit_code == 0
    result = invoke("train", "pop", "-d", p5_folder, "-o", run)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert invoke("train", "pop", "-d", p5_folder, "-o", run, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "pop", "-d", "/no/such/folder", "-o", "OUT"], "neither a registered dataset"),
        (["train", "nosuchmodel", "-d", "DATA", "-o", "OUT"], "unknown model"),
        (["train", "pop", "-d", "DATA", "-o", "OUT", "novalue"], "not key=value"),
        (["train", "pop", "-d", "DATA", "-o", "OUT", "protocol.ks=oops"], "protocol.ks"),
        (["evaluate", "--run", "OUT"], "not a run directory"),
    ],
)
def test_user_errors_are_one_clear_line_and_leave_nothing(p5_folder, tmp_path, args, message):
    out_dir = tmp_path / "out"
    args = [str(out_dir) if a == "OUT" else str(p5_folder) if a == "DATA" else a for a in args]
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    if args[0] == "train":
        assert not (out_dir / "metrics.json").exists()


def test_data_commands(p5_folder):
    result = invoke("data", "list")
    assert result.exit_code == 0 and "movielens-1m" in result.output and "amazon-beauty" in result.output
    result = invoke("data", "info", p5_folder)
    assert result.exit_code == 0 and "users" in result.output
    result = invoke("data", "prepare", p5_folder)
    assert result.exit_code == 0 and "'users': 30" in result.output


@pytest.mark.realdata
def test_real_movielens_100k_pop_through_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "pop"
    result = invoke("train", "pop", "--dataset", "movielens-100k", "--output", run)
    if "not installed" in result.output:
        pytest.skip("MovieLens packages not installed (make installs recbole==1.2.1 --no-deps)")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["cases"] == 943
    # Pop on ML-100K without excluding history: a sane, non-trivial level (RecBole, history excluded: 0.0152)
    assert 0.005 < metrics["test"]["ndcg@10"] < 0.05


def test_overwrite_replaces_a_run_and_never_deletes_other_folders(p5_folder, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", p5_folder, "-o", run, "prep.user_core=2").exit_code == 0
    (run / "model" / "stale.bin").write_text("from the old run")
    (run / "notes.txt").write_text("the user's own file")
    assert invoke("train", "pop", "-d", p5_folder, "-o", run, "prep.user_core=2", "--overwrite").exit_code == 0
    assert not (run / "model" / "stale.bin").exists() and (run / "metrics.json").is_file()
    assert (run / "notes.txt").read_text() == "the user's own file"  # only what a run writes is replaced
    other = tmp_path / "my-notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    result = invoke("train", "pop", "-d", p5_folder, "-o", other, "--overwrite")
    assert result.exit_code == 2 and "not made by recfm" in result.output
    assert (other / "notes.txt").read_text() == "keep me"
