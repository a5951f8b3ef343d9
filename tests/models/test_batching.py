import logging

import pytest
import torch

from recfm.models import batching
from recfm.models.batching import autocast_dtype, native_bf16


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend this CPU does (True) or does not (False) compute bfloat16 natively."""

    def set_native(native: bool):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        batching._warn_emulated_bf16.cache_clear()

    yield set_native
    batching._warn_emulated_bf16.cache_clear()


def test_auto_takes_bf16_only_where_the_cpu_computes_it_natively(cpu_bf16):
    cpu_bf16(True)
    assert native_bf16("cpu") and autocast_dtype("auto", "cpu") is torch.bfloat16
    cpu_bf16(False)
    assert not native_bf16("cpu") and autocast_dtype("auto", "cpu") is None


def test_explicit_bf16_is_kept_on_an_emulating_cpu_with_one_warning(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="recfm.models"):
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "autocast: auto" in caplog.records[0].message
    cpu_bf16(True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recfm.models"):
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert not caplog.records


def test_full_precision_and_unknown_values():
    assert autocast_dtype(None) is None
    assert autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="auto"):
        autocast_dtype("int8")
