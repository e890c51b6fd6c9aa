"""Layer names, value names and file names."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from delve import SaturationTracker
from delve.common.naming import MODES, RunRecord, layer_name, parse_value_name, safe_filename, value_name


@pytest.mark.parametrize(
    ("qualified", "expected"),
    [("features.0", "features-0"), ("encoder.layers.3.fc", "encoder-layers-3-fc"), ("fc", "fc")],
)
def test_layer_name_replaces_dots(qualified, expected):
    assert layer_name(qualified) == expected


def test_value_name_format():
    assert value_name("train", "saturation", "features-0") == "train-saturation_features-0"
    assert value_name("eval", "intrinsic-dimensionality", "fc_1") == "eval-intrinsic-dimensionality_fc_1"


@given(
    mode=st.sampled_from(MODES),
    statistic=st.from_regex(r"[a-z][a-z-]{0,20}", fullmatch=True),
    layer=st.text(min_size=1, max_size=30),
)
def test_parse_inverts_value_name(mode, statistic, layer):
    """Modes and statistic names hold no '_', so any layer name survives the round trip."""
    parsed = parse_value_name(value_name(mode, statistic, layer))
    assert parsed is not None
    assert (parsed.mode, parsed.statistic, parsed.layer) == (mode, statistic, layer)


@pytest.mark.parametrize("name", ["loss", "test_accuracy", "train-loss", "train-", "valid-saturation_fc", "train-_x"])
def test_user_scalars_do_not_parse_as_statistics(name):
    assert parse_value_name(name) is None


@given(st.text(max_size=40))
def test_safe_filename_never_leaves_the_folder(name):
    cleaned = safe_filename(name)
    assert cleaned
    assert os.sep not in cleaned and "/" not in cleaned and "\\" not in cleaned
    assert cleaned not in (".", "..")
    assert os.path.basename(cleaned) == cleaned
    assert all(c.isascii() for c in cleaned)
    assert safe_filename(name) == cleaned


@pytest.mark.parametrize(
    ("name", "expected"),
    [("train-saturation_features-0", "train-saturation_features-0"), ("a/b", "a_b"), ("..", "_.."), ("", "_")],
)
def test_safe_filename_examples(name, expected):
    assert safe_filename(name) == expected


def test_tracker_logs_nested_names_with_dashes():
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 3)), nn.ModuleDict({"head": nn.Linear(3, 2)}))

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body[1]["head"](self.body[0](x))

    wrapper = Wrapper()
    with SaturationTracker("x", modules=wrapper, nosave=True) as tracker:
        wrapper(torch.randn(8, 3))
        values = tracker.add_saturations()
    assert list(values) == ["train-saturation_body-0-0", "train-saturation_body-1-head"]
    assert [parse_value_name(key).layer for key in values] == ["body-0-0", "body-1-head"]


def test_run_record_keeps_widths_and_descriptions_and_reads_the_format_1_file(tmp_path):
    import json

    from delve.output.formats.record import read_record, write_record

    descriptions = {"0": "Linear 64->256", "2": "Linear 256->10"}
    record = RunRecord(("0", "2"), ("saturation",), (), {"0": 256, "2": 10}, descriptions)
    write_record(tmp_path / "run", record)
    content = json.loads((tmp_path / "run.run.json").read_text())
    assert content["format"] == 3 and content["widths"] == {"0": 256, "2": 10}
    assert read_record(tmp_path / "run") == record
    assert [record.label(layer) for layer in ("0", "2", "x")] == ["0 (Linear 64->256)", "2 (Linear 256->10)", "x"]
    # delve 0.2.0 wrote format 1: no widths, no descriptions; layers are then shown by name alone.
    old = {"format": 1, "layers": ["fc"], "statistics": ["saturation", "nonfinite-batches"], "mode_statistics": []}
    (tmp_path / "old.run.json").write_text(json.dumps(old))
    loaded = read_record(tmp_path / "old")
    assert loaded == RunRecord(("fc",), ("saturation", "nonfinite-batches"), ())
    assert loaded.widths == {} and loaded.label("fc") == "fc"
    (tmp_path / "bad.run.json").write_text(json.dumps({**old, "widths": {"fc": "wide"}}))
    with pytest.raises(ValueError, match="is not a delve run record"):
        read_record(tmp_path / "bad")


def test_the_tracker_records_each_layer_s_width_and_module(tmp_path):
    import json

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    savefile = str(tmp_path / "run")
    with SaturationTracker(savefile, modules=model) as tracker:
        assert tracker.run_record.widths == {}  # known from the first forward pass
        model(torch.randn(4, 3, 6, 6))
        tracker.add_saturations()
        assert tracker.run_record.widths == {"0": 8, "2": 5}
    content = json.loads((tmp_path / "run.run.json").read_text())
    assert content["widths"] == {"0": 8, "2": 5}
    assert content["descriptions"] == {"0": "Conv2d 3->8", "2": "Linear 128->5"}
