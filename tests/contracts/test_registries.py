"""Registries refuse to replace an entry silently: a duplicate key needs ``replace=True``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import delve.capture.observation as observations
import delve.statistics.registry as statistics
import delve.writers.registry as registry
from delve import SaturationTracker, register_observer, register_statistic, register_writer
from delve.statistics.registry import Statistic
from delve.writers import CSVWriter, NPYWriter


@pytest.fixture
def isolated(monkeypatch):
    monkeypatch.setattr(statistics, "STATISTICS", dict(statistics.STATISTICS))
    monkeypatch.setattr(registry, "WRITERS", dict(registry.WRITERS))
    monkeypatch.setattr(observations, "_REGISTRY", dict(observations._REGISTRY))


def test_a_builtin_statistic_is_not_replaced_by_accident(isolated) -> None:
    impostor = Statistic("lsat", "saturation", lambda summary: 0.5)
    with pytest.raises(ValueError, match=r"already registered.*'lsat'.*replace=True"):
        register_statistic(impostor)
    assert statistics.STATISTICS["lsat"] is not impostor
    register_statistic(impostor, replace=True)
    assert statistics.STATISTICS["lsat"] is impostor


def test_a_user_statistic_registered_twice_needs_replace(isolated) -> None:
    register_statistic(Statistic("top", "top-eigenvalue", lambda s: float(s.spectrum.values[0])))
    with pytest.raises(ValueError, match="'top'"):
        register_statistic(Statistic("top", "largest-eigenvalue", lambda s: 0.0))
    assert statistics.STATISTICS["top"].name == "top-eigenvalue"


def test_a_builtin_writer_key_is_not_replaced_by_accident(isolated) -> None:
    with pytest.raises(ValueError, match=r"'csv'.*CSVWriter.*replace=True"):
        register_writer("csv", NPYWriter)
    with pytest.raises(ValueError, match="'CSV'"):  # keys are case-insensitive
        register_writer("CSV", NPYWriter)
    assert registry.WRITERS["csv"] is CSVWriter
    register_writer("csv", NPYWriter, replace=True)
    assert registry.WRITERS["csv"] is NPYWriter


def test_a_builtin_observer_is_not_replaced_by_accident(isolated, ref) -> None:
    def halves(module, output, config):
        return output / 2

    with pytest.raises(ValueError, match=r"already registered for Linear.*replace=True"):
        register_observer(nn.Linear, halves)
    layer = nn.Linear(3, 2)
    tracker = SaturationTracker("run", modules=layer, nosave=True, stats=["trc"])
    with torch.no_grad():
        out = layer(torch.randn(50, 3))
    expected = float(ref.cov(out.numpy()).trace())
    assert tracker.add_saturations()["train-covariance-trace_linear"] == pytest.approx(expected)
    tracker.close()

    class Sub(nn.Linear):
        pass

    register_observer(Sub, halves)  # a subclass may get its own observer
    register_observer(nn.Linear, halves, replace=True)
    assert observations.find_observer(layer).observer is halves
