import pytest


@pytest.fixture(scope="module", autouse=True)
def _tiny_models_on_one_thread(one_thread):
    """Every textid test runs tiny models: one thread (the root conftest's ``one_thread``)."""
    yield
