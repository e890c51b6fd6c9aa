"""The tracker's verdicts: receptive fields from the first input, facts in the run record, the report.

References: :func:`delve.receptive_field` called on the same model and input
shape, fields hand-computed (1 + 2L pixels after L 3x3 convolutions of
stride 1), rank bounds from the layers' shapes, and a conv stack whose later
layers copy fewer and fewer channels of the first, so their saturation falls
by construction past the border.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from copying_stack import copying_stack
from torch import nn

from delve import SaturationTracker, receptive_field
from delve.output.formats.record import read_record


def test_receptive_fields_are_delve_receptive_field_at_the_first_input_shape() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, dilation=2), nn.Flatten()
    )
    with SaturationTracker("run", modules=model, nosave=True) as tracker:
        with pytest.raises(RuntimeError, match="after the first batch"):
            tracker.receptive_fields()
        model(torch.randn(2, 3, 12, 10))
        assert len(model._forward_pre_hooks) == 0  # the shape hook removed itself
        model(torch.randn(2, 3, 14, 14))  # a later input does not change it
        fields = tracker.receptive_fields()
    pd.testing.assert_frame_equal(fields, receptive_field(model, (2, 3, 12, 10)))
    # By hand: 3; then a 2x2 pool (jump 2) and a 3x3 kernel dilated by 2: 3 + 1 + (5 - 1) * 2 = 12.
    assert fields["rf_min"].tolist() == [(3, 3), (12, 12)]
    assert fields["beyond_input"].tolist() == [False, True]  # 12 > 10 on the second axis


def test_receptive_fields_of_the_tracked_layers_only_and_notes_without_one_model() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with SaturationTracker("run", modules=model, layer_filter=["1", "3"], nosave=True) as tracker:
        model(torch.randn(2, 1, 8, 8))
        assert tracker.receptive_fields()["layer"].tolist() == ["1"]
    with SaturationTracker("run", modules=[model[0], model[1]], nosave=True) as tracker:
        model(torch.randn(2, 1, 8, 8))
        fields = tracker.receptive_fields()
    assert fields["layer"].tolist() == ["layer0", "layer1"]
    assert fields["rf_min"].isna().all() and fields["note"].str.contains("not one model").all()


def test_the_meta_run_calls_no_forward_hook_of_the_model() -> None:
    model = copying_stack()
    seen = []
    model[2].register_forward_hook(lambda module, inputs, output: seen.append(output.device.type))
    model.register_forward_hook(lambda module, inputs, output: seen.append(output.device.type))
    with SaturationTracker("run", modules=model, nosave=True) as tracker:
        model(torch.randn(4, 1, 4, 4))
        assert seen == ["cpu", "cpu"]
        tracker.receptive_fields()
        tracker.add_saturations()  # writes the facts: receptive fields on the meta device
    assert seen == ["cpu", "cpu"]


def test_facts_go_into_the_run_record_and_come_back(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(2, 16, 3, groups=2, padding=1), nn.Flatten(), nn.Linear(16 * 25, 4))
    savefile = tmp_path / "run"
    with SaturationTracker(str(savefile), modules=model) as tracker:
        assert tracker.run_record.facts == {"0": {"bound": 16}, "2": {"bound": 4}}  # no input seen yet
        model(torch.randn(64, 2, 5, 5))
        tracker.add_saturations()
    content = json.loads((tmp_path / "run.run.json").read_text())
    assert content["format"] == 3
    # Grouped 3x3 convolution 2 -> 16: min(2 * 9, 16) = 16; Linear 400 -> 4: 4.
    assert content["facts"] == {
        "0": {"bound": 16, "rf_min": [3, 3], "rf_max": [3, 3], "input_size": [5, 5], "beyond_input": False, "note": ""},
        "2": {"bound": 4},
    }
    record = read_record(savefile)
    assert record.facts["0"]["rf_min"] == (3, 3) and record.facts["0"]["beyond_input"] is False


def test_report_finds_the_tail_past_the_border_of_a_small_input(tmp_path) -> None:
    model = copying_stack()
    with SaturationTracker(str(tmp_path / "run"), modules=model, stats=["lsat", "idim"]) as tracker:
        for _ in range(3):
            model(torch.randn(1024, 1, 4, 4))
            values = tracker.add_saturations()
        report = tracker.report()
    saturation = [values[f"train-saturation_{layer}"] for layer in "01234"]
    # The copies keep a subset of the first layer's channels: saturation falls from layer 1 on.
    assert saturation[0] == saturation[1] and saturation[1] >= saturation[2] >= saturation[3] >= saturation[4]
    assert saturation[4] == 1 / 8
    assert report["layer"].tolist() == list("01234")
    # Fields 3, 5, 7, 9, 11 pixels on a 4-pixel input: every layer from the second is past the border.
    assert report["rf_min"].tolist() == [(3, 3), (5, 5), (7, 7), (9, 9), (11, 11)]
    tail = report["findings"].str.contains("tail").tolist()
    assert tail == [False, True, True, True, True]
    assert report.loc[1, "action"].startswith("Remove 1 to 4, or raise the input resolution to about 5x5 pixels")
    assert "idle-width" in report.loc[4, "findings"]  # one direction of the 8 it could use
    assert report["bound"].tolist() == [8] * 5  # min(1 * 9, 8) and min(8 * 9, 8)
    assert report["width"].tolist() == [8] * 5


def test_report_before_any_epoch_is_empty_and_needs_no_files() -> None:
    with SaturationTracker("run", modules=copying_stack(), nosave=True) as tracker:
        assert tracker.report().empty


def test_a_copy_of_the_model_gets_no_working_shape_hook() -> None:
    import copy
    import pickle

    model = copying_stack()
    with SaturationTracker("run", modules=model, nosave=True) as tracker:
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            twin(torch.randn(2, 1, 6, 6))
        with pytest.raises(RuntimeError, match="has not run"):
            tracker.receptive_fields()  # the copies' inputs are not the model's
        model(torch.randn(2, 1, 4, 4))
        assert tracker.receptive_fields()["input_size"].tolist() == [(4, 4)] * 5
