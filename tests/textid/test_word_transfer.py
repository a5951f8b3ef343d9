import pytest
import torch

from recfm.textid.word_transfer import map_new_rows, r_squared


def table_embedder(vectors: dict[str, torch.Tensor]):
    return lambda words: torch.stack([vectors[w] for w in words])


def test_a_linear_relation_between_encoder_and_rows_is_recovered_for_new_words():
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(80)]
    vectors = {w: torch.randn(12, generator=g) for w in words}
    true_map, offset = torch.randn(12, 5, generator=g), torch.randn(5, generator=g)
    rows = torch.stack([vectors[w] @ true_map + offset for w in words])
    known, new = words[:60], words[60:]
    predicted, report = map_new_rows(known, rows[:60], new, table_embedder(vectors))
    assert predicted.shape == (20, 5)
    assert torch.allclose(predicted, rows[60:], atol=0.05)
    assert report["held_out_r2"] > 0.99 and report["mapped_words"] == 20 and report["from_words"] == 60


def test_rows_unrelated_to_the_encoder_are_reported_as_unpredictable():
    g = torch.Generator().manual_seed(1)
    words = [f"w{i}" for i in range(200)]
    vectors = {w: torch.randn(12, generator=g) for w in words}
    rows = torch.randn(150, 4, generator=g)
    predicted, report = map_new_rows(words[:150], rows, words[150:], table_embedder(vectors))
    assert torch.isfinite(predicted).all() and report["held_out_r2"] < 0.1
    assert report["ridge_alpha"] == 100.0  # the strongest shrinkage: predict (nearly) the mean row


def test_r_squared_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(2)
    actual, predicted = torch.randn(30, 1, generator=g), torch.randn(30, 1, generator=g)
    assert r_squared(predicted, actual) == pytest.approx(sklearn.r2_score(actual.numpy(), predicted.numpy()), abs=1e-6)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="known words"):
        map_new_rows(["a", "b"], torch.zeros(3, 2), ["c"], lambda w: torch.zeros(len(w), 2))
    with pytest.raises(ValueError, match="at least 5"):
        map_new_rows(["a", "b"], torch.zeros(2, 2), ["c"], lambda w: torch.zeros(len(w), 2))
