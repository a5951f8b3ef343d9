"""`recfm serve`: the HTTP API of a trained run, its request checks and its micro-batching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from helpers import free_port, tiny_shop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfm.data.registry import load_dataset
from recfm.recommender import TopK, TrainableRecommender
from recfm.runs import train_run
from recfm.serve import Limits, RecommendationService, create_app
from recfm.serve.service import TitleIndex, normalize_title


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    os.environ["RECFM_CACHE_DIR"] = str(root / "cache")
    folder = tiny_shop(root / "tiny-shop")
    common = ["prep.user_core=2", "prep.item_core=0"]
    train_run("sasrec", str(folder), root / "sasrec", overrides=[*common, "epochs=2", "hidden_size=16", "num_layers=1",
                                                                 "show_progress=false", "batch_size=8"])
    train_run("pop", str(folder), root / "pop", overrides=common)
    train_run("textid", str(folder), root / "textid", overrides=[
        *common, "backbone=t5-tiny-scratch", "vocab_size=200", "t5={dropout_rate: 0.0}", "rec_epochs=1", "warm_start_epochs=1",
        "batch_size=16", "num_beams=4", "num_threads=1", "initial_ids={kind: extractive}", "strategy=rec_only",
        "rounds=1"])
    train_run("textid", str(folder), root / "textid-items", overrides=[
        *common, "formulation=items", "strategy=rec_only", "rec_epochs=2", "batch_size=8", "num_beams=4",
        "num_threads=1", "initial_ids={kind: extractive}", "max_history=8",
        "items={hidden_size: 16, num_layers: 1, num_heads: 2, decoder_size: 16}"])
    train_run("textid", str(folder), root / "textid-sequence", overrides=[
        *common, "formulation=sequence", "backbone=llama-scratch", "strategy=rec_only", "rec_epochs=2",
        "batch_size=8", "num_beams=4", "num_threads=1", "initial_ids={kind: extractive}", "max_history=8",
        "vocab_size=200", "sequence={hidden_size: 16, num_layers: 1, num_heads: 2}"])
    return root


class StubModel(TrainableRecommender):
    """Scores item i as i / n_items from any history: enough for the request checks and error
    mapping, which must not depend on what a trained model happens to answer."""

    embeds_histories = True

    def __init__(self, n_items: int):
        self.n_items = n_items

    def recommend(self, histories, k, exclude=None) -> TopK:
        ranked = np.arange(self.n_items, 0, -1)
        rows = [[i for i in ranked if not exclude or i not in exclude[b]][:k] for b in range(len(histories))]
        items = np.array([r + [0] * (k - len(r)) for r in rows], dtype=np.int64)
        return TopK(items=items, scores=np.where(items > 0, items / self.n_items, -np.inf))

    def embed(self, histories) -> np.ndarray:
        return np.array([[len(h), 1.0] for h in histories], dtype=np.float32)


@pytest.fixture(scope="module")
def stub_service(tmp_path_factory):
    data = load_dataset(tiny_shop(tmp_path_factory.mktemp("stub") / "tiny-shop"), use_cache=False)
    return RecommendationService(StubModel(data.n_items), data, model_name="stub", limits=Limits(max_history=8, max_k=20))


@pytest.fixture(scope="module")
def stub_client(stub_service):
    with TestClient(create_app(stub_service, max_batch=16, max_wait_ms=20)) as c:
        yield c


def test_the_stub_answers_through_the_server(stub_client):
    r = stub_client.post("/recommend", json={"history": ["i1", "i2"], "k": 3, "exclude_history": False})
    assert r.status_code == 200, r.text
    assert [x["rank"] for x in r.json()["items"]] == [1, 2, 3]
    assert stub_client.post("/embed", json={"history": ["i1", "i2"]}).json()["embedding"] == [2.0, 1.0]


@pytest.fixture(scope="module")
def client(runs):
    service = RecommendationService.from_run(runs / "sasrec", Limits(max_history=8, max_k=20))
    with TestClient(create_app(service, max_batch=16, max_wait_ms=20)) as c:
        yield c


def test_health_describes_the_run(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "sasrec" and body["n_items"] == 12 and body["embeddings"]


def test_recommend_by_ids_and_by_titles_agree_and_exclude_history(client):
    by_id = client.post("/recommend", json={"history": ["i1", "i2", "i3"], "k": 5})
    assert by_id.status_code == 200, by_id.text
    items = by_id.json()["items"]
    assert [x["rank"] for x in items] == [1, 2, 3, 4, 5]
    assert not {"i1", "i2", "i3"} & {x["item_id"] for x in items}  # exclude_history defaults to true
    assert all(x["title"].startswith("red widget") for x in items)
    assert all(a["score"] >= b["score"] for a, b in zip(items, items[1:]))
    by_title = client.post("/recommend", json={"titles": ["Red Widget 1", "red-widget 2", "red widgit 3"], "k": 5})
    assert by_title.status_code == 200, by_title.text
    assert by_title.json()["history"] == ["i1", "i2", "i3"] and by_title.json()["items"] == items
    assert by_id.json()["resolved"] is None
    assert by_title.json()["resolved"] == [  # every title echoed with what it became
        {"given": "Red Widget 1", "item_id": "i1", "title": "red widget 1", "score": 1.0, "exact": True},
        {"given": "red-widget 2", "item_id": "i2", "title": "red widget 2", "score": 1.0, "exact": True},
        {"given": "red widgit 3", "item_id": "i3", "title": "red widget 3", "score": 0.917, "exact": False}]
    kept = client.post("/recommend", json={"history": ["i1"], "k": 12, "exclude_history": False}).json()["items"]
    assert len(kept) == 12 and "i1" in {x["item_id"] for x in kept}


@pytest.mark.parametrize("body, status, words", [
    ({"history": ["nope"]}, 422, "not in"),
    ({"history": []}, 422, "empty"),
    ({"history": [f"i{i % 12}" for i in range(9)]}, 413, "at most 8"),
    ({"history": ["i1"], "titles": ["red widget 1"]}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ({"titles": ["a blue gizmo"]}, 422, "1 title matches no item"),
    ({"titles": ["widget"]}, 422, "with confidence"),
    ({"titles": ["red widget 1", "x" * 301]}, 422, "longer than 300"),
    ({"history": ["i1"], "k": 0}, 422, "k must be between 1 and 20"),
    ({"history": ["i1"], "k": 21}, 422, "k must be between 1 and 20"),
    ({"history": ["i1"], "k": "ten"}, 422, "k:"),
    # strict types: nothing is coerced
    ({"history": ["i1"], "k": True}, 422, "k: Input should be a valid integer"),
    ({"history": ["i1"], "k": "3"}, 422, "k: Input should be a valid integer"),
    ({"history": ["i1"], "k": 3.0}, 422, "k: Input should be a valid integer"),
    ({"history": ["i1"], "exclude_history": "yes"}, 422, "exclude_history: Input should be a valid boolean"),
    ({"history": ["i1"], "exclude_history": 1}, 422, "exclude_history: Input should be a valid boolean"),
    ({"titles": ["red widget 1"], "fuzzy": "true"}, 422, "fuzzy: Input should be a valid boolean"),
    ({"titles": [1]}, 422, "titles.0: Input should be a valid string"),
    ({"history": "i1"}, 422, "history"),
    ({"history": ["i1"], "user": "u1"}, 422, "user"),
])
def test_bad_requests_get_clear_4xx(stub_client, body, status, words):
    r = stub_client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_json_and_oversized_bodies(stub_client):
    r = stub_client.post("/recommend", content=b'{"history": ["i1",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = stub_client.post("/recommend", content=b'\x80', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]
    assert stub_client.get("/recommend").status_code == 405 and "error" in stub_client.get("/recommend").json()
    assert stub_client.get("/nowhere").status_code == 404 and "error" in stub_client.get("/nowhere").json()
    r = stub_client.post("/recommend", content=b"x" * (1 << 21), headers={"content-type": "application/json"})
    assert r.status_code == 413
    # streamed in chunks, with no content-length to check: counted as it arrives
    r = stub_client.post("/recommend", content=iter([b'{"history": ["', b"i1" * (1 << 19), b'"]}']),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over" in r.json()["error"], r.text
    small = stub_client.post("/recommend", content=iter([b'{"history": ', b'["i1"], "k": 2}']),
                        headers={"content-type": "application/json"})
    assert small.status_code == 200 and len(small.json()["items"]) == 2  # a small chunked body still works
    assert stub_client.get("/health").status_code == 200


def test_batcher_refuses_beyond_its_queue_and_never_waits_on_a_dead_worker():
    import asyncio
    import threading

    from recfm.serve.batching import MicroBatcher, Overloaded

    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit("a"))  # taken by the worker, blocks in the handler
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(x)) for x in "bc"]  # fill the queue
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="2 requests are already waiting"):
            await batcher.submit("d")
        release.set()
        assert await first == "a" and [await q for q in queued] == ["b", "c"]
        batcher.worker.cancel()
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="worker has stopped"):
            await batcher.submit("e")
        await batcher.stop()

    asyncio.run(scenario())


def same_answers(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    """Equal item lists; scores equal up to float32 rounding (batched matmuls sum in another order)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        items_x, items_y = x["items"], y["items"]
        if {**x, "items": None} != {**y, "items": None} or [i["item_id"] for i in items_x] != [i["item_id"] for i in items_y]:
            return False
        if any(abs(i["score"] - j["score"]) > tol or {**i, "score": 0} != {**j, "score": 0} for i, j in zip(items_x, items_y)):
            return False
    return True


def concurrent_matches_alone(client, histories, exclude=True) -> None:
    def ask(u):
        return client.post("/recommend", json={"history": histories[u], "k": 3 + u % 2, "exclude_history": exclude}).json()

    alone = [ask(u) for u in range(len(histories))]
    before = client.get("/health").json()
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, range(len(histories))))
    after = client.get("/health").json()
    assert same_answers(together, alone), (together, alone)
    assert after["batched_requests"] - before["batched_requests"] == len(histories)
    assert after["batches"] - before["batches"] < len(histories)  # some requests were answered by a shared call


def test_concurrent_requests_share_model_calls_and_match_single_answers(client):
    concurrent_matches_alone(client, [[f"i{(u + j) % 12}" for j in range(1 + u % 5)] for u in range(24)])


@pytest.mark.slow
@pytest.mark.parametrize("run", ["textid", "textid-items", "textid-sequence"])
def test_textid_answers_do_not_depend_on_the_requests_batched_with_them(runs, run):
    """Beam search over textual IDs with histories of very different lengths excluded: every
    batched answer is the one the request gets alone (exclusion happens inside the search, so the
    beam width does not grow with the longest history of the batch). Both formulations."""
    service = RecommendationService.from_run(runs / run, Limits(max_history=12, max_k=20))
    assert service.textual_ids is not None
    with TestClient(create_app(service, max_batch=16, max_wait_ms=50)) as c:
        histories = [[f"i{(u + j) % 12}" for j in range(1 + (u * 5) % 11)] for u in range(16)]
        concurrent_matches_alone(c, histories)
        answer = c.post("/recommend", json={"history": histories[3], "k": 4}).json()["items"]
        assert len(answer) == 4 and not {x["item_id"] for x in answer} & set(histories[3])
        assert all(x["textual_id"] for x in answer)


def test_embed_is_the_vector_behind_the_scores(client, runs):
    r = client.post("/embed", json={"history": ["i4", "i5"]})
    assert r.status_code == 200, r.text
    vector = np.array(r.json()["embedding"])
    service = RecommendationService.from_run(runs / "sasrec")
    scores = vector @ service.model.net.item_embeddings().detach().numpy().T
    expected = service.model.score([[5, 6]])[0].numpy()  # i4, i5 are items 5 and 6 (i0 is item 1)
    np.testing.assert_allclose(scores[1:], expected[1:], rtol=1e-4, atol=1e-4)


def test_embed_on_a_model_without_embeddings_is_501(runs):
    with TestClient(create_app(RecommendationService.from_run(runs / "pop"))) as c:
        r = c.post("/embed", json={"history": ["i1"]})
        assert r.status_code == 501 and "no embeddings" in r.json()["error"]
        assert c.post("/recommend", json={"history": ["i1"], "k": 2}).status_code == 200


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_subnormal=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"history": st.lists(st.sampled_from(["i1", "i2", "x", ""]) | st.integers(), max_size=10)},
                          optional={"k": json_values, "exclude_history": json_values, "titles": json_values}),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(["/recommend", "/embed"]))
def test_no_json_body_crashes_the_server(stub_client, body, path):
    r = stub_client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 422), (body, r.text)
    assert "error" in r.json() or r.status_code == 200


@settings(max_examples=60, deadline=None)
@given(title=st.text(max_size=30))
def test_title_matching_never_fails_on_any_text(title):
    index = TitleIndex(["Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)"])
    m = index.match(title)
    assert m.item is None or 1 <= m.item <= 3
    assert 0.0 <= m.score <= 1.0 and all(1 <= i <= 3 and 0 <= s <= 1 for i, s in m.candidates)
    assert not m.confident or m.item is not None
    assert index.match("toy  STORY 1995").item == 1 and normalize_title("Café, Noir!") == "cafe noir"


@pytest.mark.slow
def test_recfm_serve_command_answers_over_http(runs):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recfm.cli", "--quiet", "serve", "--run", str(runs / "sasrec"),
                             "--port", str(port), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ})
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "server did not start within 60 s"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": ["i1", "i2"], "k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        assert "/recommend" in httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_numeric_item_ids_are_read_as_ids(runs):
    folder = runs / "numeric"
    folder.mkdir()
    (folder / "user_sequence.txt").write_text("\n".join(f"u{u} " + " ".join(str((u + j) % 9 + 1) for j in range(5))
                                                        for u in range(20)) + "\n")
    train_run("pop", str(folder), runs / "pop-numeric", overrides=["prep.user_core=2", "prep.item_core=0"])
    with TestClient(create_app(RecommendationService.from_run(runs / "pop-numeric"))) as c:
        as_numbers = c.post("/recommend", json={"history": [1, 2], "k": 3})
        assert as_numbers.status_code == 200, as_numbers.text
        assert as_numbers.json() == c.post("/recommend", json={"history": ["1", "2"], "k": 3}).json()
        assert c.post("/recommend", json={"history": [True]}).status_code == 422


@pytest.fixture(scope="module")
def textid_client(runs):
    service = RecommendationService.from_run(runs / "textid", Limits(max_history=8, max_k=20))
    with TestClient(create_app(service, max_batch=16, max_wait_ms=5)) as c:
        yield c


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=64)), chunked=st.booleans(),
       path=st.sampled_from(["/recommend", "/embed"]))
def test_no_body_crashes_a_textid_server(textid_client, body, chunked, path):
    """Any bytes, sent whole or in chunks, to a beam-search model: a 2xx/4xx/501 JSON answer."""
    r = textid_client.post(path, content=iter([body[: len(body) // 2], body[len(body) // 2 :]]) if chunked else body,
                           headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 422, 501), (body, r.text)
    assert "error" in r.json() or r.status_code == 200
    assert textid_client.get("/health").status_code == 200


MOVIES = ["Star Wars: Episode IV - A New Hope (1977)", "Star Maps (1997)", "Star Wars: Episode I - The Phantom Menace (1999)",
          "Matrix, The (1999)", "Hamlet (1996)", "Hamlet (1948)", "Toy Story (1995)", "Jurassic Park (1993)",
          "Godfather, The (1972)", "Godfather: Part II, The (1974)"]


def test_title_index_matches_with_a_score_and_never_substitutes_silently():
    index = TitleIndex(MOVIES)
    star = index.match("star wars")  # the MovieLens-1M case: it used to become Star Maps
    assert not star.confident and star.item == 1 and star.score < index.high
    assert [i for i, _ in star.candidates[:3]] == [1, 3, 2]  # the titles it names come first, then Star Maps
    for text, item, exact in [("Toy Story (1995)", 7, True), ("toy story", 7, False), ("the matrix", 4, False),
                              ("Matrix, The", 4, False), ("godfather", 9, False), ("Jurasic Park", 8, False)]:
        m = index.match(text)
        assert (m.item, m.exact, m.confident) == (item, exact, True), (text, m)
    assert index.match("toy story").score == 1.0 and index.match("Jurasic Park").score < 1.0
    hamlet = index.match("hamlet")  # two films of that title: ambiguous, both offered
    assert hamlet.ambiguous and not hamlet.confident and [i for i, _ in hamlet.candidates] == [5, 6]
    assert index.match("Hamlet (1948)").item == 6 and index.match("Hamlet (1948)").confident


@pytest.fixture(scope="module")
def movies(runs):
    """A MovieLens-1M-format folder (ratings.dat, movies.dat) with real-style titles, and a Pop run on it."""
    folder = runs / "movies"
    folder.mkdir()
    (folder / "movies.dat").write_text("".join(f"{i + 1}::{t}::Drama\n" for i, t in enumerate(MOVIES)), encoding="latin-1")
    (folder / "ratings.dat").write_text("".join(f"{u + 1}::{(u + j) % len(MOVIES) + 1}::5::{1000 * u + j}\n"
                                                for u in range(20) for j in range(5)))
    train_run("pop", str(folder), runs / "pop-movies", overrides=["prep.user_core=2", "prep.item_core=0"])
    return runs / "pop-movies"


def test_titles_without_a_confident_match_are_refused_with_the_catalog_titles(movies):
    with TestClient(create_app(RecommendationService.from_run(movies))) as c:
        r = c.post("/recommend", json={"titles": ["star wars"], "k": 3})
        assert r.status_code == 422, r.text
        body = r.json()
        assert "'star wars' is not an exact match" in body["error"] and '"fuzzy": true' in body["error"]
        [miss] = body["unmatched"]
        assert miss["given"] == "star wars" and not miss["ambiguous"]
        titles = [x["title"] for x in miss["candidates"]]
        assert titles[:2] == ["Star Wars: Episode IV - A New Hope (1977)", "Star Wars: Episode I - The Phantom Menace (1999)"]
        assert all(0 < x["score"] < 0.9 for x in miss["candidates"])  # the catalog's own titles, with their scores
        fuzzy = c.post("/recommend", json={"titles": ["star wars", "the matrix"], "k": 3, "fuzzy": True})
        assert fuzzy.status_code == 200, fuzzy.text
        first, matrix = fuzzy.json()["resolved"]
        assert first["title"] == "Star Wars: Episode IV - A New Hope (1977)" and not first["exact"] and first["score"] < 0.9
        assert matrix == {"given": "the matrix", "item_id": matrix["item_id"], "title": "Matrix, The (1999)", "score": 1.0,
                          "exact": False}
        ambiguous = c.post("/recommend", json={"titles": ["hamlet"]})
        assert ambiguous.status_code == 422 and ambiguous.json()["unmatched"][0]["ambiguous"]
        assert [x["title"] for x in ambiguous.json()["unmatched"][0]["candidates"]] == ["Hamlet (1996)", "Hamlet (1948)"]
        embedded = c.post("/embed", json={"titles": ["star wars"]})
        assert embedded.status_code == 501  # Pop has no embeddings; the 501 comes first

    from recfm.cli import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["--quiet", "recommend", "--run", str(movies), "--title", "star wars", "--title", "Toy Story"])
    assert r.exit_code == 2 and "Star Wars: Episode IV - A New Hope (1977)" in r.output and "--fuzzy" in r.output, r.output
    r = runner.invoke(cli, ["--quiet", "recommend", "--run", str(movies), "--title", "star wars", "--title",
                            "Matrix, The (1999)", "--fuzzy", "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [(m["title"], m["exact"]) for m in out["resolved"]] == [("Star Wars: Episode IV - A New Hope (1977)", False),
                                                                   ("Matrix, The (1999)", True)]
    assert len(out["recommendations"]) == 2
    r = runner.invoke(cli, ["--quiet", "recommend", "--run", str(movies), "--title", "Toy Story", "--history", "1"])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_non_json_content_types_are_415(stub_client):
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        for path in ("/recommend", "/embed"):
            r = stub_client.post(path, content=b'{"history": ["i1"]}', headers=headers)
            assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"], (headers, r.text)
    for ctype in ("application/json; charset=utf-8", "application/vnd.recfm+json"):
        assert stub_client.post("/recommend", content=b'{"history": ["i1"]}', headers={"content-type": ctype}).status_code == 200


def test_server_errors_carry_no_exception_text(stub_service, caplog, monkeypatch):
    service = stub_service

    def broken(*args, **kwargs):
        raise RuntimeError("secret: /home/someone/model.bin is corrupt")

    monkeypatch.setattr(service.model, "recommend", broken)
    monkeypatch.setattr(service.model, "embed", broken)
    with TestClient(create_app(service), raise_server_exceptions=False) as c, caplog.at_level("ERROR", "recfm.serve"):
        for path in ("/recommend", "/embed"):
            r = c.post(path, json={"history": ["i1"]})
            assert r.status_code == 500 and r.json() == {"error": "internal error: the server logged it"}, r.text
        assert "secret" in caplog.text  # the traceback is in the log, not in the reply
        assert c.get("/health").status_code == 200
        c.app.state.batcher.worker.cancel()
        time.sleep(0.1)
        r = c.post("/recommend", json={"history": ["i1"]})
        assert r.status_code == 503 and r.json() == {"error": "the model worker has stopped; restart the server"}


def test_the_openapi_schema_is_the_real_contract(stub_client):
    from recfm.serve.app import ErrorResponse

    spec = stub_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    expected = {"/recommend": {400, 413, 415, 422, 500, 503}, "/embed": {400, 413, 415, 422, 500, 501, 503}}
    for path, statuses in expected.items():
        responses = spec["paths"][path]["post"]["responses"]
        assert {int(s) for s in responses if s != "200"} == statuses, (path, responses.keys())
        for s in statuses:
            assert responses[str(s)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in json.dumps(spec["paths"])  # FastAPI's {"detail": [...]} is never sent
    assert schemas["ErrorResponse"]["required"] == ["error"] and schemas["ErrorResponse"]["properties"]["error"]["type"] == "string"
    k = schemas["RecommendRequest"]["properties"]["k"]
    assert (k["type"], k["minimum"], k["maximum"], k["default"]) == ("integer", 1, 20, 10)
    assert "recfm recommend" in schemas["RecommendRequest"]["properties"]["exclude_history"]["description"]
    assert "404" in spec["info"]["description"] and "405" in spec["info"]["description"]
    # and the error bodies the server really sends fit that model, status by status
    bodies = [stub_client.post("/recommend", content=b"{", headers={"content-type": "application/json"}),
              stub_client.post("/recommend", json={"history": ["i1"] * 9}), stub_client.post("/recommend", content=b"{}"),
              stub_client.post("/recommend", json={"titles": ["widget"]}), stub_client.post("/recommend", json={"k": 3}),
              stub_client.get("/nowhere"), stub_client.get("/recommend")]
    assert [b.status_code for b in bodies] == [400, 413, 415, 422, 422, 404, 405]
    for b in bodies:
        ErrorResponse.model_validate_json(b.content, strict=True)


def test_docs_pages_work_offline(stub_client):
    import re

    for page in ("/docs", "/redoc"):
        r = stub_client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        urls = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""", html)
        urls = [a or b for a, b in urls]
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "http://" not in html and "https://" not in html  # no CDN, no fonts, no validator badge
        for u in urls:
            assert stub_client.get(u).status_code == 200, u
    assert stub_client.get("/docs/assets/nothing.js").status_code == 404


def test_textid_k_is_capped_at_the_search_beam_and_answers_are_prefixes(textid_client):
    """The beam is the run's (num_beams=4) for every k the server accepts, so a larger request's top k
    starts with the answer to a smaller one; a k above the beam is refused, not searched wider."""
    health = textid_client.get("/health").json()
    assert health["search_beam"] == 4 and health["max_k"] == 4
    r = textid_client.post("/recommend", json={"history": ["i1", "i2"], "k": 5})
    assert r.status_code == 422 and "k must be between 1 and 4" in r.json()["error"] and "beam of 4" in r.json()["error"]
    k = textid_client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    assert (k["maximum"], k["default"]) == (4, 4)
    assert len(textid_client.post("/recommend", json={"history": ["i1"]}).json()["items"]) == 4
    for history in (["i1"], ["i3", "i4", "i5"], ["i7", "i0"]):
        for exclude in (True, False):
            lists = [[x["item_id"] for x in textid_client.post("/recommend", json={
                "history": history, "k": k, "exclude_history": exclude}).json()["items"]] for k in (1, 2, 3, 4)]
            assert all(lists[-1][: len(short)] == short for short in lists), lists


def test_answer_and_text_embeddings_are_refused_by_a_run_without_them(stub_client):
    r = stub_client.post("/answer", json={"task": "seqrec", "input": "x"})
    assert r.status_code == 501 and "generative" in r.json()["error"]
    r = stub_client.post("/embed", json={"query": "a comedy"})
    assert r.status_code == 422 and "multitask" in r.json()["error"]
