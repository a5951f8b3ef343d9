"""`recfm tune`: a real search through the CLI, resumable after a kill, test scored once for the best
trial only, bad search spaces refused before any trial runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import random_sequences

from recfm.checkpoint import CRASH_ENV

TINY = {"epochs": 3, "batch_size": 8, "num_layers": 1, "num_threads": 1, "show_progress": False, "patience": 5}


def _tune(folder, out, space, *extra, crash_after=None, trials=3):
    env = {**os.environ, "RECFM_CACHE_DIR": str(out.parent / "cache")}
    env.pop(CRASH_ENV, None)
    if crash_after:
        env[CRASH_ENV] = str(crash_after)
    return subprocess.run([sys.executable, "-m", "recfm.cli", "--quiet", "tune", "sasrec", "-d", str(folder), "--space",
                           str(space), "--trials", str(trials), "-o", str(out), *extra], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture()
def search(tmp_path):
    folder = random_sequences(tmp_path / "shop", n_users=40, n_items=15, length=8)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "fixed": {**TINY, "prep.user_core": 2, "prep.item_core": 0},
        "params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                   "hidden_size": {"type": "categorical", "choices": [8, 16]}}}))
    return folder, space


@pytest.mark.slow
def test_a_search_survives_a_kill_and_scores_test_once(search, tmp_path):
    folder, space = search
    out = tmp_path / "tune"
    killed = _tune(folder, out, space, crash_after=4)  # dies inside the second trial
    assert killed.returncode == -9, killed.stderr
    assert (out / "study.db").is_file() and not (out / "best.json").exists()
    again = _tune(folder, out, space)
    assert again.returncode == 0, again.stderr
    best = json.loads((out / "best.json").read_text())
    assert best["completed"] == 3 and set(best["test"]) >= {"ndcg@10", "hr@10"}
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,valid ndcg@10") and sum(",complete," in r for r in rows) == 3
    assert sum(",fail," in r for r in rows) == 1  # the killed trial, run again under a new number
    for trial in (out / "trials").iterdir():  # no trial ever scored test
        metrics = trial / "metrics.json"
        if metrics.is_file():
            assert "test" not in json.loads(metrics.read_text())
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert cfg["model"]["hidden_size"] in (8, 16) and cfg["prep"]["user_core"] == 2
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG" and (out / "trials.md").is_file()
    # best.yaml is a config `recfm train` takes
    train = subprocess.run([sys.executable, "-m", "recfm.cli", "--quiet", "train", "sasrec", "-d", str(folder), "-o",
                            str(tmp_path / "best-run"), "-c", str(out / "best.yaml")], capture_output=True, text=True,
                           env={**os.environ, "RECFM_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    assert train.returncode == 0, train.stderr


@pytest.mark.parametrize("params, needle", [
    ({"hiden_size": {"type": "int", "low": 8, "high": 16}}, "did you mean 'hidden_size'"),
    ({"lr": {"type": "categorical", "choices": []}}, "non-empty 'choices'"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low=0.1 > high=0.01"),
    ({}, "nothing to search"),
])
def test_bad_search_spaces_fail_before_any_trial(search, tmp_path, params, needle):
    from recfm.baselines.sasrec import SASRecConfig
    from recfm.errors import ConfigError
    from recfm.tune import load_space

    folder, _ = search
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({"params": params}))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_space(space, "sasrec", str(folder), SASRecConfig)
    from typer.testing import CliRunner

    from recfm.cli import app

    result = CliRunner().invoke(app, ["--quiet", "tune", "sasrec", "-d", str(folder), "--space", str(space), "-o",
                                      str(tmp_path / "t")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "t" / "study.db").exists()


def test_a_resumed_search_does_not_replay_its_first_proposals():
    import optuna

    from recfm.tune import sampler_for

    def first_draws(sampler):
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("lr", 1e-4, 1e-1, log=True) for _ in range(3)]

    assert first_draws(sampler_for(0, 0, 8)) == first_draws(sampler_for(0, 0, 8))  # reproducible
    assert first_draws(sampler_for(0, 4, 8)) != first_draws(sampler_for(0, 0, 8))  # resumed: new draws


def test_stepped_float_values_reach_the_config_as_written_decimals():
    import optuna

    from recfm.tune import Param

    param = Param(type="float", low=0.0, high=0.4, step=0.1)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"p": [0.30000000000000004]}))
    assert param.suggest(study.ask(), "p") == 0.3


def test_a_fresh_search_starts_from_the_base_configuration_when_the_space_holds_it():
    from recfm.config import resolve
    from recfm.model_table import MODELS
    from recfm.tune import SearchSpace, base_params

    def space(hidden_choices, dropout_low=0.1):
        return SearchSpace.model_validate({"fixed": {"lr": 0.002}, "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "hidden_size": {"type": "categorical", "choices": hidden_choices},
            "dropout": {"type": "float", "low": dropout_low, "high": 0.5, "step": 0.1},
            "protocol.exclude_history": {"type": "categorical", "choices": [False, True]}}})

    run_cfg, model_cfg, _ = resolve("sasrec", "movielens-100k", MODELS["sasrec"].config, None,
                                    ["lr=0.002", "hidden_size=64", "dropout=0.3"])
    assert base_params(space([32, 64]), run_cfg, model_cfg) == {
        "lr": 0.002, "hidden_size": 64, "dropout": 0.3, "protocol.exclude_history": False}
    assert base_params(space([32, 128]), run_cfg, model_cfg) is None  # 64 is not a choice
    assert base_params(space([64], dropout_low=0.15), run_cfg, model_cfg) is None  # 0.3 is off the 0.15 + 0.1k grid
