"""recfm: recommendation foundation models on one data layer and one evaluation protocol.

``recfm.train``, ``recfm.load_run`` and ``recfm.load_dataset`` are the Python API (recfm/api.py);
they are imported on first use, so ``import recfm`` stays light.
"""

__version__ = "0.1.0"

_API = ("Run", "load_dataset", "load_run", "train")


def __getattr__(name: str):
    if name in _API:
        from recfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'recfm' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
