"""precision="auto": float64 products where float64 is fast, float32 elsewhere; MPS keeps state on the CPU."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import delve.engine.precision as precision_module
from delve import SaturationTracker
from delve.engine.precision import resolve_precision, state_device, tf32_products


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(precision_module, "_announced", set())


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((8, 0), "float64"), ((9, 0), "float64"), ((10, 0), "float64"), ((8, 6), "float32"), ((7, 5), "float32")],
)
def test_auto_follows_the_gpus_float64_speed(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    device = torch.device("cuda", 0)
    if expected == "float32":
        with pytest.warns(UserWarning, match=r"float32 products on cuda:0"):
            assert resolve_precision("auto", device) == "float32"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_precision("auto", device) == "float64"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per device
        assert resolve_precision("auto", device) == expected


def test_explicit_choices_and_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "float64"
    assert resolve_precision("float32", cpu) == "float32"
    assert resolve_precision("tf32", cpu) == "float32"  # TensorFloat-32 exists on CUDA only
    assert resolve_precision("tf32", torch.device("cuda", 0)) == "tf32"


def test_mps_state_lives_on_the_cpu_said_once() -> None:
    with pytest.warns(UserWarning, match="MPS has no float64"):
        assert state_device(torch.device("mps")) == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert state_device(torch.device("mps")) == torch.device("cpu")
        assert state_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


def test_tf32_products_restore_the_global_switch() -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    with tf32_products(True):
        assert matmul.allow_tf32
    assert matmul.allow_tf32 == before


def test_the_tracker_takes_every_precision_and_names_them_when_refusing() -> None:
    for precision in ("auto", "float64", "float32", "tf32"):
        SaturationTracker("p", modules=nn.Linear(2, 2), nosave=True, precision=precision).close()
    with pytest.raises(ValueError, match=r"precision must be one of 'auto', 'float64', 'float32', 'tf32'"):
        SaturationTracker("p", modules=nn.Linear(2, 2), nosave=True, precision="float16")
