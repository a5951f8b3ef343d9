"""`recfm serve --run MULTITASK_RUN`: retrieval, embeddings and answers of a trained multitask run
through the same server, on RecFound-format files and a tiny local backbone."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_multitask_cli import write_fixture

from recfm.multitask.run import load_run_config, train_run
from recfm.multitask.serving import INDEX_META, records_catalog
from recfm.serve import RecommendationService, create_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mt-serve")
    config = load_run_config(write_fixture(tmp, steps=2, checkpoints=1))
    train_run(config, tmp / "run")
    service = RecommendationService.from_run(tmp / "run")
    with TestClient(create_app(service, max_batch=8, max_wait_ms=20)) as client:
        yield tmp / "run", service, client


def test_health_lists_the_tasks_and_capabilities(served):
    _, service, client = served
    info = client.get("/health").json()
    assert info["answers"] and info["embeddings"] and not info["textual_ids"]
    assert info["tasks"] == {"embedding": ["Emb_user"], "generative": ["Attribute"]}
    assert info["n_items"] == service.data.n_items > 0


def test_recommend_ranks_the_item_index_by_cosine_and_excludes_the_history(served):
    _, service, client = served
    r = client.post("/recommend", json={"history": ["1", "2"], "k": 5, "exclude_history": True})
    assert r.status_code == 200, r.text
    ids = [x["item_id"] for x in r.json()["items"]]
    assert len(ids) == 5 and not {"1", "2"} & set(ids)
    model = service.model
    query = model.embed([[1, 2]])[0]
    sims = model.index.numpy() @ query
    sims[[0, 1]] = -np.inf
    assert ids == [str(i + 1) for i in np.argsort(-sims, kind="stable")[:5]]


def test_embed_routes_histories_queries_and_items(served):
    _, service, client = served
    history = client.post("/embed", json={"history": ["1", "2"]}).json()
    assert np.allclose(history["embedding"], service.model.embed([[1, 2]])[0], atol=1e-5)
    query = client.post("/embed", json={"query": "watched movie 3", "task": "Emb_user"}).json()["embedding"]
    item = client.post("/embed", json={"item": "movie 4"}).json()["embedding"]
    assert np.isclose(np.linalg.norm(query), 1, atol=1e-4) and not np.allclose(query, item)
    assert np.allclose(item, service.model.index[service.data.item_titles.index("movie 4")].numpy(), atol=1e-5)
    bad = client.post("/embed", json={"query": "x", "task": "Attribute"})
    assert bad.status_code == 422 and "Emb_user" in bad.json()["error"]
    both = client.post("/embed", json={"query": "x", "item": "y"})
    assert both.status_code == 422 and "exactly one" in both.json()["error"]


def test_answer_picks_an_option_or_generates_text(served):
    _, service, client = served
    options = ["yes", "no"]
    r = client.post("/answer", json={"task": "Attribute", "input": "Is movie 3 a comedy?", "options": options})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == options[body["option"]]
    free = client.post("/answer", json={"task": "Attribute", "input": "Is movie 3 a comedy?"}).json()
    assert free["option"] is None and isinstance(free["answer"], str)
    for request, status in (({"task": "Emb_user", "input": "x"}, 422), ({"task": "Attribute", "input": " "}, 422),
                            ({"task": "Attribute", "input": "x", "options": ["a"]}, 422),
                            ({"task": "Attribute", "input": "x", "options": ["a", "a"]}, 422),
                            ({"task": "Attribute", "input": "x" * 5000}, 413)):
        r = client.post("/answer", json=request)
        assert r.status_code == status and "error" in r.json(), request


def test_the_item_index_is_cached_beside_the_adapter(served):
    run, service, _ = served
    assert (run / INDEX_META).is_file()
    again = RecommendationService.from_run(run)
    assert np.array_equal(again.model.index.numpy(), service.model.index.numpy())


def test_a_records_catalog_holds_every_distinct_item_text_once():
    from recfm.multitask.records import EmbRecord

    records = {"u": {"train": [EmbRecord("u", "i", "q", "a", ["b"])], "test": [EmbRecord("u", "i", "q", "b", ["c"])]}}
    catalog = records_catalog(records, "x")
    assert catalog.item_text == ["a", "b", "c"] and catalog.item_ids == ["1", "2", "3"]
