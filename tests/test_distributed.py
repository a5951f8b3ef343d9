"""Two CPU processes (gloo, launched by torchrun) train to the result of one process.

Tolerance: with dropout off, every step sees the same global batch and the same averaged
gradient, so per-epoch losses agree to 1e-4 relative and the metrics of the final model to
1e-3 (only float summation order differs). Evaluation is sharded by case and gathered, so the
case count is the split's, never padded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import launch, random_sequences

from recfm import distributed


def _train(folder: Path, out: Path, processes: int) -> dict:
    args = ["-m", "recfm.cli", "--quiet", "train", "sasrec", "-d", str(folder), "-o", str(out), "prep.user_core=2",
            "prep.item_core=0", "epochs=3", "batch_size=7", "hidden_size=16", "num_layers=1", "dropout=0",
            "show_progress=false", "num_threads=1", "protocol.batch_size=5"]
    done = launch(processes, args, env={"RECFM_CACHE_DIR": str(out.parent / "cache")})
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    folder = random_sequences(tmp_path / "tiny-shop", n_users=61, n_items=20, length=9, seed=1)
    one = _train(folder, tmp_path / "one", 1)
    two = _train(folder, tmp_path / "two", 2)
    assert two["environment"]["processes"] == 2 and one["environment"]["processes"] == 1
    np.testing.assert_allclose([h["loss"] for h in two["training"]["history"]],
                               [h["loss"] for h in one["training"]["history"]], rtol=1e-4)
    for split in ("valid", "test"):
        assert two[split]["cases"] == one[split]["cases"] == 61  # sharded, gathered, nothing padded or doubled
        for key in ("ndcg@10", "hr@10", "mrr"):
            assert two[split][key] == pytest.approx(one[split][key], abs=1e-3)
    assert "process 0 of 2" in (tmp_path / "two" / "train.log").read_text()


def test_single_process_helpers_are_identity():
    assert distributed.world_size() == 1 and distributed.is_main()
    idx = distributed.shard(5)
    np.testing.assert_array_equal(distributed.gather_by_index(5, idx, idx * 2), [0, 2, 4, 6, 8])
    assert distributed.all_sum(1.5, 2) == [1.5, 2.0]


@pytest.mark.slow
def test_textid_alternate_training_under_two_processes_matches_one(tmp_path):
    """IDGenRec's whole loop (recommender epochs, ID regeneration by Algorithm 1 with candidates generated
    on each process's share of the items, generator epochs through soft IDs, sharded beam-search
    evaluation) in one and in two processes, dropout off: the same IDs, losses within 1e-4 relative."""
    from tests.textid.test_training import write_shop

    shop = write_shop(tmp_path / "shop")
    overrides = ["backbone=t5-tiny-scratch", "vocab_size=200", "t5={dropout_rate: 0.0}", "generator_dropout=0.0",
                 "rec_epochs=1", "gen_epochs=1", "rounds=2", "warm_start_epochs=1", "batch_size=8", "num_beams=5",
                 "num_threads=1", "initial_ids={kind: extractive}", "strategy=alternate",
                 "unique={length_ranges: [[1, 4], [4, 6]], penalty_step: 0.5}"]
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"run{n}"
        done = launch(n, ["-m", "recfm.cli", "--quiet", "train", "textid", "-d", str(shop), "-o", str(out), *overrides],
                      env={"RECFM_CACHE_DIR": str(tmp_path / "cache")})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        runs[n] = (json.loads((out / "metrics.json").read_text()), (out / "item_ids.tsv").read_text())
    (one, ids_one), (two, ids_two) = runs[1], runs[2]
    assert two["environment"]["processes"] == 2
    assert ids_two == ids_one
    losses = lambda m: [h["loss"] for h in m["training"]["history"] if "loss" in h]  # noqa: E731
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-4)
    gen = lambda m: [r["generator"]["losses"] for r in m["training"]["rounds"] if "generator" in r]  # noqa: E731
    np.testing.assert_allclose(gen(two), gen(one), rtol=1e-4)
    assert len(losses(one)) == 2 and len(gen(one)) == 2 and "assign" in one["training"]["rounds"][1]  # generator first
    for key in ("ndcg@10", "hr@10", "mrr"):
        assert two["test"][key] == pytest.approx(one["test"][key], abs=1e-3)


@pytest.mark.slow
def test_sharded_engines_are_refused_with_a_clear_error(tmp_path):
    """An accelerate config for FSDP or DeepSpeed sets these variables; the trainers replicate
    the model and gather on process 0, so they refuse instead of hanging."""
    folder = random_sequences(tmp_path / "shop", n_users=12, n_items=8, length=5, seed=0)
    for key, engine in distributed.SHARDING_ENV.items():
        done = launch(1, ["-m", "recfm.cli", "--quiet", "train", "pop", "-d", str(folder), "-o", str(tmp_path / key)],
                      env={key: "true", "RECFM_CACHE_DIR": str(tmp_path / "cache")})
        assert done.returncode == 2 and f"{engine} is not supported" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
