"""recfm: recommendation foundation models on one data layer and one evaluation protocol.

``recfm.train``, ``recfm.load_run`` and ``recfm.load_dataset`` are the Python API (recfm/api.py);
they are imported on first use, so ``import recfm`` stays light.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP threads that spin while they wait for a core lose it to any other busy process: on a shared
# 2-core box a training step beside one busy process took 2.1x as long with the default policy and
# 1.6x with PASSIVE, at the same speed alone (benchmarks/threads.py, docs/results.md). The policy is
# read once, when torch starts its OpenMP runtime, so it is set before torch is imported; a value the
# user set is kept.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_API = ("Run", "load_dataset", "load_run", "train")


def __getattr__(name: str):
    if name in _API:
        from recfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'recfm' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
