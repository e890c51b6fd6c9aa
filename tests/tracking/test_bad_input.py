"""Bad configuration is refused in the constructor with a ValueError naming what is accepted."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.writers import WRITERS


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 2)
    )


def build(tmp_path, **kwargs) -> SaturationTracker:
    kwargs.setdefault("modules", small_model())
    return SaturationTracker(str(tmp_path / "run"), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "must_mention"),
    [
        ({"stats": ["lsat", "nope"]}, ["'nope'", "lsat", "idim", "cov", "det", "trc", "dtrc", "embed"]),
        ({"stats": "bogus_eval"}, ["'bogus_eval'", "lsat"]),
        ({"stats": []}, ["lsat"]),
        ({"save_to": "parquet"}, ["'parquet'", "csv"]),
        ({"save_to": ["csv", "nope"]}, ["'nope'", "csv"]),
        ({"save_to": 3}, ["csv"]),
        ({"conv_method": "sum"}, ["'sum'", "channelwise", "mean", "max", "median", "flatten"]),
        ({"timeseries_method": "first"}, ["'first'", "last_timestep", "timestepwise"]),
        ({"interpolation_strategy": "cubic"}, ["'cubic'", "nearest", "bilinear"]),
    ],
)
def test_unknown_choices_name_the_accepted_values(tmp_path, kwargs, must_mention) -> None:
    with pytest.raises(ValueError) as info:
        build(tmp_path, **kwargs)
    for text in must_mention:
        assert text in str(info.value)


def test_every_registered_writer_key_is_listed_when_save_to_is_unknown(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        build(tmp_path, save_to="nope")
    for key in WRITERS:
        assert key in str(info.value)


@pytest.mark.parametrize("threshold", [0, 0.0, -0.5, 1.0000001, 2, float("nan"), float("inf"), "0.9", None, True])
def test_threshold_outside_zero_one(tmp_path, threshold) -> None:
    with pytest.raises(ValueError, match=r"sat_threshold.*\(0, 1\]"):
        build(tmp_path, sat_threshold=threshold)


@pytest.mark.parametrize("threshold", [1, 1.0, 0.5, 1e-9, np.float64(0.99)])
def test_threshold_inside_zero_one_is_accepted(tmp_path, threshold) -> None:
    build(tmp_path, sat_threshold=threshold, nosave=True).close()


@pytest.mark.parametrize("argument", ["log_interval", "max_samples"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_counts_below_one_are_refused(tmp_path, argument, value) -> None:
    with pytest.raises(ValueError, match=rf"{argument} must be an int >= 1"):
        build(tmp_path, **{argument: value})


@pytest.mark.parametrize("argument", ["log_interval", "max_samples"])
def test_numpy_integers_are_accepted(tmp_path, argument) -> None:
    tracker = build(tmp_path, nosave=True, **{argument: np.int64(3)})
    assert getattr(tracker, argument) == 3
    assert type(getattr(tracker, argument)) is int
    tracker.close()


@pytest.mark.parametrize(
    "modules",
    [
        nn.Sequential(nn.ReLU(), nn.Dropout()),  # nothing supported inside
        [],
        {},
        nn.Sequential(nn.Conv2d(1, 2, 3)),  # with include_conv=False below
    ],
)
def test_nothing_to_track(tmp_path, modules) -> None:
    with pytest.raises(ValueError, match="nothing to track") as info:
        build(tmp_path, modules=modules, include_conv=False)
    assert "Linear" in str(info.value)


@pytest.mark.parametrize("argument", ["layer_filter", "ignore_layer_names"])
@pytest.mark.parametrize("pattern", ["classifier", "features.*", "9", ["3", "nope"]])
def test_names_and_globs_that_match_nothing(tmp_path, argument, pattern) -> None:
    with pytest.raises(ValueError, match="matches no tracked layer") as info:
        build(tmp_path, **{argument: pattern})
    # The message lists what could have been matched.
    for name in ("0", "3", "5"):
        assert name in str(info.value).split("layers:")[-1]


def test_filter_that_keeps_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match="nothing to track"):
        build(tmp_path, layer_filter=lambda name: False)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"modules": None}, "modules is required"),
        ({"modules": "model"}, "modules must be"),
        ({"modules": [nn.Linear(2, 2), "x"]}, r"modules\[1\] must be an nn.Module"),
        ({"initial_epoch": -1}, "initial_epoch must be an int >= 0"),
        ({"precision": "float16"}, "float64"),
        ({"device": "gpu:x"}, "not a valid torch device"),
        ({"embed_size": 0}, "embed_size must be an int >= 1"),
        ({"interpolation_downsampling": 0}, "interpolation_downsampling"),
        ({"write_rank": -1}, "write_rank must be an int >= 0"),
        ({"write_rank": 1}, r"write_rank must be None .* 0\.\.0"),
        ({"ignore_layer_names": [3]}, "must be strings"),
    ],
)
def test_other_bad_arguments(tmp_path, kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        build(tmp_path, **kwargs)


def test_refusal_leaves_no_hook_and_no_file(tmp_path) -> None:
    model = small_model()
    with pytest.raises(ValueError):
        SaturationTracker(str(tmp_path / "run"), modules=model, stats=["nope"])
    with pytest.raises(ValueError):
        SaturationTracker(str(tmp_path / "run"), modules=model, layer_filter="nope")
    assert all(not module._forward_hooks for module in model.modules())
    assert os.listdir(tmp_path) == []
    model(torch.randn(2, 3, 8, 8))  # the model still works untouched


# ---------------------------------------------------------------- edge cases of use
class TwoBranches(nn.Module):
    """``rare`` runs only when asked, so it may see no data at all."""

    def __init__(self) -> None:
        super().__init__()
        self.common = nn.Linear(4, 3).double()
        self.rare = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor, rare: bool = False) -> torch.Tensor:
        return self.rare(x) if rare else self.common(x)


def test_layer_without_data_and_eval_never_run_log_nothing(tmp_path, ref) -> None:
    import pandas as pd

    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, stats=["lsat", "trc"], average_sat=True)
    x = torch.randn(20, 4, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    values = tracker.add_saturations()
    expected = ref.stats(out.numpy())
    assert values == {
        "train-saturation_common": expected["saturation"],
        "train-covariance-trace_common": pytest.approx(expected["covariance-trace"], rel=1e-12),
        "train-average-saturation": expected["saturation"],
    }
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert not [column for column in frame.columns if "rare" in column or column.startswith("eval")]
    tracker.close()


def test_stop_and_resume(tmp_path, ref) -> None:
    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True, stats=["cov"])
    kept = [torch.randn(10, 4, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        outputs = [model(kept[0])]
        tracker.stop()
        assert not tracker.is_recording()
        model(torch.randn(50, 4, dtype=torch.float64) * 100)
        model(torch.randn(50, 4, dtype=torch.float64), rare=True)
        tracker.stop()  # twice is harmless
        tracker.resume()
        tracker.resume()
        assert tracker.is_recording()
        outputs.append(model(kept[1]))
    values = tracker.add_saturations()
    assert list(values) == ["train-covariance-matrix_common"]
    np.testing.assert_allclose(
        values["train-covariance-matrix_common"], ref.cov(torch.cat(outputs).numpy()), rtol=1e-12
    )
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.resume()


def test_stopped_for_a_whole_epoch_logs_nothing(tmp_path) -> None:
    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True)
    tracker.stop()
    model(torch.randn(10, 4, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match=r"found no recorded forward pass .* in epoch 0.*tracker.resume\(\)"):
        assert tracker.add_saturations() == {}
    tracker.close()


def test_add_saturations_twice_in_a_row(tmp_path) -> None:
    import pandas as pd

    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, stats=["lsat", "idim"])
    model(torch.randn(10, 4, dtype=torch.float64))
    first = tracker.add_saturations()
    assert first
    with pytest.warns(RuntimeWarning, match="found no recorded forward pass of any tracked layer in epoch 1"):
        assert tracker.add_saturations() == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracker.add_saturations() == {}  # said once per tracker
    tracker.add_scalar("loss", 0.5)
    model(torch.randn(10, 4, dtype=torch.float64))
    third = tracker.add_saturations()
    tracker.close()
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    # Epochs 1 and 2 had no data: no row claims a saturation for them.
    assert frame["train-saturation_common"].dropna().index.tolist() == [0, 3]
    assert frame.loc[3, "train-saturation_common"] == third["train-saturation_common"]
    assert frame.loc[3, "loss"] == 0.5


def test_add_saturations_twice_without_reset_repeats_the_running_values(tmp_path) -> None:
    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True, reset_covariance=False)
    model(torch.randn(10, 4, dtype=torch.float64))
    assert tracker.add_saturations() == tracker.add_saturations()
    tracker.close()


def test_no_data_at_all_writes_nothing_bogus(tmp_path) -> None:
    tracker = SaturationTracker(str(tmp_path / "run"), modules=TwoBranches(), average_sat=True)
    with pytest.warns(RuntimeWarning, match=r"delve \(.*run\): add_saturations\(\) found no recorded forward pass"):
        assert tracker.add_saturations() == {}
    tracker.close()
    if (tmp_path / "run.csv").exists():
        import pandas as pd

        assert pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).columns.tolist() == []


def test_close_twice_and_hooks_removed(tmp_path) -> None:
    model = TwoBranches()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True)
    tracker.close()
    tracker.close()
    assert all(not module._forward_hooks for module in model.modules())
