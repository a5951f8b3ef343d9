"""Every file recfm reads back that is not a dataset source (those are fuzzed in tests/data), fed
random or corrupted content: a ValueError (or CheckpointError) that names the file, never a crash
with another exception type. Run directories hold only such files (no pickle)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfm.bench.tasks import ClickPairs
from recfm.checkpoint import CheckpointError, load_latest
from recfm.config import ConfigError, read_yaml
from recfm.multitask.records import read_records
from recfm.multitask.recfound_jsonl import read_recfound_jsonl
from recfm.textid.recommender import ItemIdTable

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)
record_like = st.fixed_dictionaries({}, optional={
    "task": json_values, "kind": st.sampled_from(["generative", "embedding", "x"]) | json_values,
    "text": json_values, "query": json_values, "pos": json_values, "neg": json_values, "system": json_values,
    "input": json_values, "response": json_values, "options": json_values})
lines = st.lists(st.one_of(record_like.map(json.dumps), json_values.map(json.dumps), st.text(max_size=20)), max_size=5)
bodies = st.one_of(lines.map("\n".join), json_values.map(json.dumps), st.text(max_size=40))


def _clear(fn, path) -> None:
    try:
        fn(path)
    except (ValueError, CheckpointError) as e:  # ConfigError, JSONDecodeError, UnicodeDecodeError are ValueErrors
        assert str(e)


@pytest.mark.parametrize("reader", [read_records, read_recfound_jsonl, read_yaml, ItemIdTable.read, ClickPairs.load],
                         ids=["task-records", "recfound-jsonl", "yaml-config", "item-ids-tsv", "click-pairs-npz"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, raw=st.binary(max_size=40), use_raw=st.booleans())
def test_readers_fail_clearly_on_any_content(reader, body, raw, use_raw, tmp_path):
    path = tmp_path / "file"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(body)
    _clear(reader, path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pointer=bodies, tensors=st.binary(max_size=40), state=bodies)
def test_checkpoint_reader_fails_clearly(pointer, tensors, state, tmp_path):
    (tmp_path / "latest.json").write_text(pointer)
    folder = tmp_path / "step"
    folder.mkdir(exist_ok=True)
    (folder / "tensors.safetensors").write_bytes(tensors)
    (folder / "state.json").write_text(state)
    _clear(load_latest, tmp_path)


def test_config_errors_are_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)
    np.savez(tmp_path / "p.npz", meta=np.array("{}"))
    with pytest.raises(ValueError, match="format"):
        ClickPairs.load(tmp_path / "p.npz")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import os

    from helpers import tiny_shop

    from recfm.runs import train_run

    root = tmp_path_factory.mktemp("damaged")
    os.environ["RECFM_CACHE_DIR"] = str(root / "cache")
    train_run("sasrec", str(tiny_shop(root / "shop")), root / "run",
              overrides=["prep.user_core=2", "prep.item_core=0", "epochs=1", "hidden_size=8", "num_layers=1",
                         "show_progress=false"])
    return root / "run"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                      st.integers(1, 255)), max_size=4),
       config=st.one_of(st.none(), bodies))
def test_a_damaged_run_directory_is_a_run_error(finished_run, cut, flips, config, tmp_path_factory):
    """Truncated or flipped weights, or any config.yaml: the run loads, or load_run raises RunError
    (which the CLI and `recfm serve` print as one line); never another exception."""
    import shutil

    from recfm.runs import RunError, load_run

    run = tmp_path_factory.mktemp("copy") / "run"
    shutil.copytree(finished_run, run)
    weights = next((run / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    weights.write_bytes(bytes(data[: max(1, int(len(data) * (1 - cut))) if cut > 0.5 else len(data)]))
    if config is not None:
        (run / "config.yaml").write_text(config)
    try:
        load_run(run)
    except (RunError, ConfigError) as e:
        assert str(e)


def test_damaged_runs_through_the_cli_print_one_line(finished_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from recfm.cli import app

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    weights = next((run / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    r = CliRunner().invoke(app, ["--quiet", "evaluate", "--run", str(run)])
    assert r.exit_code == 2 and "cannot be loaded" in r.output and "Traceback" not in r.output
    (run / "config.yaml").write_text("model: {name: sasrec, hidden_size: lots}\n")
    r = CliRunner().invoke(app, ["--quiet", "evaluate", "--run", str(run)])
    assert r.exit_code == 2 and "not a valid run config" in r.output and "Traceback" not in r.output
