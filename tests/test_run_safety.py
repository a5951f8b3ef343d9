"""Nothing lost, nothing silently wrong: --overwrite, config layering, runs pinned to their data,
one error line for every mistake a user can make at the command line, file modes, the Python API."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_shop
from typer.testing import CliRunner

from recfm.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def shop(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    return tiny_shop(tmp_path / "tiny-shop")


def invoke(*args):
    return runner.invoke(app, ["--quiet", *map(str, args)])


def one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "pydantic.dev" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


# -- 1. --overwrite never deletes what recfm did not write ------------------------------------------------
def test_overwrite_refuses_a_folder_that_merely_holds_a_config_yaml(shop, tmp_path):
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "config.yaml").write_text("lr: 1\n")
    (mine / "src" / "a.py").write_text("keep\n")
    result = invoke("train", "pop", "-d", shop, "-o", mine, "--overwrite")
    one_error_line(result, "not made by recfm")
    assert (mine / "src" / "a.py").read_text() == "keep\n" and (mine / "config.yaml").read_text() == "lr: 1\n"


def test_overwrite_of_a_marked_run_removes_only_run_files(shop, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", shop, "-o", run).exit_code == 0
    assert (run / ".recfm-run").is_file()
    (run / "src").mkdir()
    (run / "src" / "a.py").write_text("keep\n")
    (run / "metrics.json").write_text("{}")
    assert invoke("train", "pop", "-d", shop, "-o", run, "--overwrite").exit_code == 0
    assert (run / "src" / "a.py").read_text() == "keep\n"
    assert json.loads((run / "metrics.json").read_text())["model"] == "pop"


def test_output_naming_a_file_is_one_line(shop, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    one_error_line(invoke("train", "pop", "-d", shop, "-o", target), "is a file")
    assert target.read_text() == "x"


# -- 2. --config layers over the shipped preset --------------------------------------------------------
def test_config_file_layers_over_the_preset_instead_of_replacing_it(tmp_path):
    from recfm.baselines.sasrec import SASRecConfig
    from recfm.config import resolve
    from recfm.textid.config import TextIDConfig

    cfg = tmp_path / "mine.yaml"
    cfg.write_text("model:\n  epochs: 2\n")
    preset = yaml.safe_load((ROOT / "configs" / "sasrec-movielens-1m.yaml").read_text())["model"]
    run, model_cfg, layers = resolve("sasrec", "movielens-1m", SASRecConfig, cfg)
    assert model_cfg.epochs == 2
    assert model_cfg.max_len == preset["max_len"] == 200 and model_cfg.dropout == preset["dropout"]
    assert layers == ["defaults", "configs/sasrec-movielens-1m.yaml", str(cfg)]

    textid_cfg = tmp_path / "textid.yaml"
    textid_cfg.write_text("model:\n  rec_epochs: 2\n")
    _, textid, _ = resolve("textid", "movielens-100k", TextIDConfig, textid_cfg)
    assert textid.rec_epochs == 2 and textid.formulation == "items"  # the preset's, not the paper's default
    assert textid.items.hidden_size == 128 != TextIDConfig().items.hidden_size

    _, bare, layers = resolve("sasrec", "movielens-1m", SASRecConfig, cfg, use_preset=False)
    assert bare.max_len == SASRecConfig().max_len and bare.epochs == 2 and layers == ["defaults", str(cfg)]


def test_run_config_records_its_layers_and_stays_rerunnable(shop, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("protocol:\n  exclude_history: true\n")
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", shop, "-o", run, "-c", cfg, "seed=3").exit_code == 0
    text = (run / "config.yaml").read_text()
    assert text.startswith(f"# resolved from: defaults < {cfg} < seed=3")
    assert json.loads((run / "metrics.json").read_text())["config_layers"] == ["defaults", str(cfg), "seed=3"]
    assert invoke("train", "pop", "-d", shop, "-o", tmp_path / "again", "-c", run / "config.yaml").exit_code == 0


# -- 4. runs pin their data ---------------------------------------------------------------------------
def test_a_run_on_a_relative_folder_is_found_from_another_directory(shop, tmp_path, monkeypatch):
    monkeypatch.chdir(shop.parent)
    assert invoke("train", "pop", "-d", shop.name, "-o", "run").exit_code == 0
    assert yaml.safe_load((shop.parent / "run" / "config.yaml").read_text())["dataset"] == str(shop)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("evaluate", "--run", shop.parent / "run", "--json")
    assert result.exit_code == 0, result.output


def test_changed_data_is_refused_naming_both_fingerprints(shop, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", shop, "-o", run).exit_code == 0
    before = json.loads((run / "data.json").read_text())["fingerprint"]
    with open(shop / "user_sequence.txt", "a") as fh:
        fh.write("u99 i1 i2 i3 i4 i5 i6\n")
    result = invoke("evaluate", "--run", run)
    one_error_line(result, before, "--allow-data-change")
    assert re.search(r"now has fingerprint [0-9a-f]{16}", result.output.replace("\n", " "))
    assert invoke("evaluate", "--run", run, "--allow-data-change", "--json").exit_code == 0
    from recfm.errors import RecfmError
    from recfm.serve.service import RecommendationService

    with pytest.raises(RecfmError, match="fingerprint"):
        RecommendationService.from_run(run)


def test_pop_refuses_counts_of_another_catalog(shop, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", shop, "-o", run).exit_code == 0
    counts = json.loads((run / "model" / "counts.json").read_text())
    (run / "model" / "counts.json").write_text(json.dumps(counts[:-2]))
    one_error_line(invoke("evaluate", "--run", run), "counts", "items")


# -- 7. one error line, never a traceback ---------------------------------------------------------------
@pytest.mark.parametrize("case, needle", [
    ("config_is_dir", "is a directory"),
    ("config_not_utf8", "not UTF-8"),
    ("config_model_list", "'model' must be a mapping"),
    ("text_fields", "prep.text_fields"),
    ("min_rating", "has no ratings"),
    ("unknown_key", "did you mean 'epochs'"),
    ("bad_value", "model.epochs = 'many'"),
])
def test_config_mistakes_are_one_line_and_leave_no_run_folder(shop, tmp_path, case, needle):
    out = tmp_path / "out"
    args = {"config_is_dir": ["pop", "-c", tmp_path],
            "config_not_utf8": ["pop", "-c", tmp_path / "latin.yaml"],
            "config_model_list": ["pop", "-c", tmp_path / "list.yaml"],
            "text_fields": ["pop", "prep.text_fields=[foo]"],
            "min_rating": ["pop", "prep.min_rating=4"],
            "unknown_key": ["sasrec", "epoch=3"],
            "bad_value": ["sasrec", "epochs=many"]}[case]
    (tmp_path / "latin.yaml").write_bytes(b"model: {note: caf\xe9}\n")
    (tmp_path / "list.yaml").write_text("model: [1, 2]\n")
    result = invoke("train", args[0], "-d", shop, "-o", out, *args[1:])
    one_error_line(result, needle)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_a_cpu_torch_is_one_line_and_leaves_nothing(shop, tmp_path):
    out = tmp_path / "out"
    one_error_line(invoke("train", "sasrec", "-d", shop, "-o", out, "device=cuda"), "device='cuda'", "device=cpu")
    assert not out.exists()


def test_a_failed_start_removes_the_folder_it_made(shop, tmp_path, monkeypatch):
    from recfm.baselines.pop import MostPopular

    def broken(*_, **__):
        raise RuntimeError("boom before training")

    monkeypatch.setattr(MostPopular, "__init__", broken)
    from recfm.runs import train_run

    with pytest.raises(RuntimeError, match="boom"):
        train_run("pop", str(shop), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_and_multitask_mistakes_are_one_line(shop, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", shop, "-o", run).exit_code == 0
    one_error_line(invoke("evaluate", "--run", run, "-o", tmp_path), "is a folder")
    one_error_line(invoke("multitask", "evaluate", "--run", run), "not a multitask run")


def test_resume_mismatch_names_the_key(shop, tmp_path):
    from recfm.baselines.sasrec import SASRecConfig
    from recfm.config import dump, resolve
    from recfm.runs import RunError, train_run

    run = tmp_path / "run"
    run.mkdir()
    cfg, _, _ = resolve("sasrec", str(shop), SASRecConfig, overrides=["hidden_size=16"])
    (run / "config.yaml").write_text(dump(cfg))
    with pytest.raises(RunError, match=r"model\.hidden_size \(16 in the run, 32 now\)"):
        train_run("sasrec", str(shop), run, overrides=["hidden_size=32"], resume=True)


# -- 10. small ones ------------------------------------------------------------------------------------
def _cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "recfm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_quiet_hides_info_lines_and_version_prints(shop, tmp_path):
    quiet = _cli("--quiet", "train", "pop", "-d", shop, "-o", tmp_path / "q", env={"RECFM_CACHE_DIR": str(tmp_path / "c")})
    assert quiet.returncode == 0, quiet.stderr
    assert "training pop" not in quiet.stderr and "INFO" not in quiet.stderr
    assert "training pop" in (tmp_path / "q" / "train.log").read_text()  # the log file keeps everything
    loud = _cli("train", "pop", "-d", shop, "-o", tmp_path / "v", env={"RECFM_CACHE_DIR": str(tmp_path / "c")})
    assert "training pop" in loud.stderr
    version = invoke("--version")
    assert version.exit_code == 0 and version.output.startswith("recfm 0.1.0")


def test_models_shows_nested_defaults_descriptions_and_presets():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "PydanticUndefined" not in result.output
    assert "initial_ids.kind" in result.output and "'extractive'" in result.output
    assert "sasrec-movielens-1m.yaml" in result.output and "max_len=200" in result.output
    assert "keep users with" not in result.output  # prep fields belong to `recfm data`, not the models


def test_run_files_follow_the_umask(shop, tmp_path):
    old = os.umask(0o022)
    try:
        assert invoke("train", "pop", "-d", shop, "-o", tmp_path / "run").exit_code == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.json", "data.json", ".recfm-run"):
        assert stat.S_IMODE((run / f).stat().st_mode) == 0o644, f
    prepared = next((tmp_path / "cache" / "prepared").iterdir())
    assert stat.S_IMODE(prepared.stat().st_mode) == 0o755


@pytest.mark.slow
def test_a_cache_write_killed_midway_leaves_no_temporary_behind(shop, tmp_path):
    from recfm.atomic import atomic_directory

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    target = tmp_path / "cache" / "entry"
    stale = tmp_path / "cache" / f".entry.tmp-{pid}-abc123"
    stale.mkdir(parents=True)
    live = tmp_path / "cache" / f".entry.tmp-{os.getppid()}-def456"  # a writer that is still running
    live.mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "x").write_text("1")
    assert (target / "x").is_file() and not stale.exists() and live.exists()


# -- the Python API, as the README shows it ----------------------------------------------------------------
@pytest.mark.realdata
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S)
    assert block, "README has no Python API example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    run = scope["run"]
    assert run.metrics["model"] == "pop" and len(scope["top"]) == 5
    assert scope["again"]["test"]["ndcg@10"] == run.metrics["test"]["ndcg@10"]


# -- fuzz: the new error paths fail as RecfmError with a message, never another exception ---------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["model", "prep", "protocol", "seed", "dataset", "epochs", "ks",
                                                "user_core", "text_fields", "x"]) | st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=yaml_values, raw=st.binary(max_size=30), use_raw=st.booleans(),
       overrides=st.lists(st.text(max_size=15), max_size=2))
def test_any_config_file_or_override_is_accepted_or_one_config_error(layer, raw, use_raw, overrides, tmp_path):
    from recfm.baselines.sasrec import SASRecConfig
    from recfm.config import resolve
    from recfm.errors import ConfigError

    path = tmp_path / "c.yaml"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(yaml.safe_dump(layer))
    try:
        resolve("sasrec", "movielens-1m", SASRecConfig, path, overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e) and "pydantic.dev" not in str(e)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(yaml_values.map(json.dumps), st.text(max_size=30)))
def test_a_damaged_data_json_is_one_error(body, tmp_path):
    from types import SimpleNamespace

    from recfm.errors import RecfmError
    from recfm.rundir import check_data

    (tmp_path / "data.json").write_text(body)
    data = SimpleNamespace(fingerprint="abc", n_users=1, n_items=1)
    try:
        check_data(tmp_path, data)
    except RecfmError as e:
        assert str(e)


def test_recommend_refuses_changed_data_too(shop, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "pop", "-d", shop, "-o", run).exit_code == 0
    with open(shop / "user_sequence.txt", "a") as fh:
        fh.write("u99 i1 i2 i3 i4 i5 i6\n")
    one_error_line(invoke("recommend", "--run", run, "--history", "i1"), "--allow-data-change")
    one_error_line(invoke("recommend", "--run", run, "--all-users", "-o", tmp_path / "r.parquet"), "--allow-data-change")
    assert invoke("recommend", "--run", run, "--history", "i1", "--allow-data-change").exit_code == 0
