"""Serving a trained run over HTTP: ``recfm serve --run DIR`` (see docs/serve.md)."""

from recfm.serve.service import Limits, RecommendationService, RequestError

__all__ = ["Limits", "RecommendationService", "RequestError", "create_app"]


def create_app(*args, **kwargs):  # FastAPI is imported only when an app is built
    from recfm.serve.app import create_app as build

    return build(*args, **kwargs)
