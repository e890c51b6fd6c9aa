"""Layer names, value names and file names."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from delve import SaturationTracker
from delve.common.naming import MODES, layer_name, parse_value_name, safe_filename, value_name


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
