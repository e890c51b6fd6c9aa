"""Findings on synthetic runs whose answers are known by construction."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from delve.verdicts.findings import LayerFacts, Thresholds, find

# The plain CNN on 8x8 digits: saturation by layer, and a probe that plateaus at layer 5.
SATURATION_8 = [0.28, 0.88, 0.94, 0.94, 0.97, 0.94, 0.94, 0.91, 0.84, 0.75, 0.63, 0.28]
ACCURACY_8 = [0.60, 0.80, 0.90, 0.97, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99]


def run(
    series: dict[str, list[float]], epochs: int = 3, mode: str = "train", extra: list | None = None
) -> pd.DataFrame:
    """A tidy table holding ``stat -> per-layer values`` for every epoch (layers named 1, 2, ...)."""
    rows = list(extra or [])
    for epoch in range(epochs):
        for stat, values in series.items():
            stat_mode = "eval" if stat == "probe-accuracy" else mode
            rows += [(epoch, stat_mode, str(i + 1), stat, value) for i, value in enumerate(values)]
    return pd.DataFrame(rows, columns=["epoch", "mode", "layer", "stat", "value"])


def plain_cnn(size: int, layers: int = 12, width: int = 32) -> list[LayerFacts]:
    """3x3 convolutions with padding 1: the field at layer L is 1 + 2L pixels (hand-computed)."""
    return [
        LayerFacts(str(layer), width, min(width * 9, width), 1 + 2 * layer, 1 + 2 * layer > size, size)
        for layer in range(1, layers + 1)
    ]


def test_the_tail_of_the_plain_cnn_at_8_pixels_begins_after_the_peak_past_the_border() -> None:
    report = find(run({"saturation": SATURATION_8, "probe-accuracy": ACCURACY_8}), plain_cnn(8))
    tail = report[report["findings"].str.contains("tail")]["layer"].tolist()
    # The border is at layer 4 (field 9 > 8); saturation peaks at layer 5 (0.97) and falls to 0.28.
    assert tail == ["6", "7", "8", "9", "10", "11", "12"]
    action = report.set_index("layer").loc["6", "action"]
    assert "Remove 6 to 12" in action and "about 13 pixels" in action
    assert "probe accuracy gains +0.000" in report.set_index("layer").loc["6", "evidence"]


def test_a_tail_whose_probe_falls_says_so_in_words() -> None:
    falling = [min(value, 0.9) - (0.2 if index >= 5 else 0.0) for index, value in enumerate(ACCURACY_8)]
    report = find(run({"saturation": SATURATION_8, "probe-accuracy": falling}), plain_cnn(8)).set_index("layer")
    best_before = max(falling[:5])
    assert f"probe accuracy stays {best_before - max(falling[5:12]):.3f} below the best layer before" in (
        report.loc["6", "evidence"]
    )


def test_no_tail_at_32_pixels_where_no_layer_passes_the_border() -> None:
    report = find(run({"saturation": SATURATION_8, "probe-accuracy": ACCURACY_8}), plain_cnn(32))
    assert not report["findings"].str.contains("tail").any()


def test_no_tail_where_the_probes_still_gain() -> None:
    rising = [0.5 + 0.04 * layer for layer in range(12)]  # the last layers still add accuracy
    report = find(run({"saturation": SATURATION_8, "probe-accuracy": rising}), plain_cnn(8))
    assert not report["findings"].str.contains("tail").any()


def test_without_fields_a_tail_needs_the_probes() -> None:
    facts = [LayerFacts(str(layer), 64) for layer in range(1, 13)]  # attention: no receptive fields
    without = find(run({"saturation": SATURATION_8}), facts)
    assert not without["findings"].str.contains("tail").any()
    with_probes = find(run({"saturation": SATURATION_8, "probe-accuracy": ACCURACY_8}), facts)
    assert with_probes[with_probes["findings"].str.contains("tail")]["layer"].tolist()[0] == "6"
    assert "the probes gain nothing there" in with_probes.set_index("layer").loc["6", "action"]


def test_idle_width_is_judged_against_the_directions_a_layer_can_use() -> None:
    # A widening layer 64 -> 256 uses at most 64 directions: 60 of them is not idle; a square 256-wide layer
    # holding its variance in 60 directions is.
    results = run({"saturation": [60 / 256, 60 / 256]})
    facts = [LayerFacts("1", 256, bound=64), LayerFacts("2", 256, bound=256)]
    report = find(results, facts).set_index("layer")
    assert report.loc["1", "findings"] == ""
    assert report.loc["2", "findings"] == "idle-width"
    assert report.loc["2", "action"] == "Narrow 2 from 256 to about 60: that many directions hold its variance."
    assert (report.loc["2", "k"], report.loc["2", "bound"]) == (60, 256)


def test_idle_width_waits_for_the_saturation_to_settle() -> None:
    settling = pd.concat(
        [run({"saturation": [value]}, epochs=1).assign(epoch=epoch) for epoch, value in enumerate([0.6, 0.3, 0.1])]
    )
    assert find(settling, [LayerFacts("1", 100)]).loc[0, "findings"] == ""
    one_epoch = run({"saturation": [0.1]}, epochs=1)
    assert find(one_epoch, [LayerFacts("1", 100)]).loc[0, "findings"] == ""  # stability not seen yet
    assert find(settling, [LayerFacts("1", 100)], Thresholds(stable_spread=0.6)).loc[0, "findings"] == "idle-width"


def test_a_dead_layer_and_too_few_rows() -> None:
    results = run({"saturation": [0.0, 0.5, math.nan], "rows": [5000, 100, 3]})
    facts = [LayerFacts("1", 16), LayerFacts("2", 16), LayerFacts("3", 16)]
    report = find(results, facts).set_index("layer")
    assert report.loc["1", "findings"] == "dead"
    assert report.loc["2", "findings"] == "too-few-rows"  # 100 rows for 16 features: fewer than 20 per feature
    assert report.loc["3", "findings"] == "too-few-rows"  # missing: fewer rows than features
    assert "3 rows" not in report.loc["3", "evidence"] and "fewer rows than features" in report.loc["3", "evidence"]
    assert report.loc["2", "rows"] == 100


def test_rows_are_counted_per_direction_a_widening_layer_can_span() -> None:
    # 16 -> 64: at most 16 directions. 400 rows are 25 per direction (enough), 6.25 per output feature.
    results = run({"saturation": [0.2, 0.2], "rows": [400, 300]})
    facts = [LayerFacts("1", 64, bound=16), LayerFacts("2", 64, bound=16)]
    report = find(results, facts).set_index("layer")
    assert "too-few-rows" not in report.loc["1", "findings"]
    assert report.loc["2", "findings"] == "too-few-rows"  # 300 rows: 18.75 per direction
    assert "the 16 directions its 64 features can span" in report.loc["2", "evidence"]


@pytest.mark.parametrize("column", ["layer", "width", "saturation", "rows", "rf_min", "probe_accuracy", "findings"])
def test_the_report_has_the_contract_columns(column: str) -> None:
    assert column in find(run({"saturation": [0.5]}), [LayerFacts("1", 8)]).columns
