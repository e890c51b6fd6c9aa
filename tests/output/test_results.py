"""Reading runs back: tidy tables against pandas, recomputed statistics against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve import SaturationTracker, load_results, recompute
from delve.output.formats.csv import EXACT_FLOATS
from delve.output.results import classify, format_summary, read_csv, summary_table, tidy, wide
from delve.tools import reconstruct_csv_from_npy_data

MODES = ("train", "eval")


@pytest.fixture(scope="module")
def npy_run(tmp_path_factory):
    """Two epochs of a tracked MLP with cov saved as NPY; the rows each layer saw are captured."""
    root = tmp_path_factory.mktemp("results")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 4))
    captured: dict[tuple[int, str, str], list[np.ndarray]] = {}

    def capture(name):
        def hook(module, inputs, output):
            mode = "train" if module.training else "eval"
            captured.setdefault((epoch, mode, name), []).append(output.detach().numpy().copy())

        return hook

    model[0].register_forward_hook(capture("0"))
    model[2].register_forward_hook(capture("2"))
    savefile = str(root / "run")
    tracker = SaturationTracker(
        savefile, save_to=["csv", "npy"], modules=model, stats=["lsat", "idim", "cov", "trc"], average_sat=True
    )
    for epoch in range(2):
        model.train()
        for _ in range(3):
            model(torch.randn(25, 8) * torch.linspace(0.1, 3, 8))
        model.eval()
        with torch.no_grad():
            model(torch.randn(30, 8))
        tracker.add_scalar("test_accuracy", 0.5 + epoch / 4)
        tracker.add_saturations()
    tracker.close()
    rows = {key: np.concatenate(parts) for key, parts in captured.items()}
    return savefile, rows


def test_classify_and_tidy_round_trip():
    assert classify("train-saturation_features-0") == ("train", "features-0", "saturation")
    assert classify("eval-covariance-trace_a_b") == ("eval", "a_b", "covariance-trace")
    assert classify("train-average-saturation") == ("train", None, "average-saturation")
    assert classify("train-loss") == (None, None, "train-loss")
    frame = pd.DataFrame(
        {"train-saturation_b": [0.5, 0.25], "train-saturation_a": [np.nan, 0.75], "loss": [1.0, 2.0]},
        index=pd.Index([3, 4], name="epoch"),
    )
    long = tidy(frame)
    assert list(long.columns) == ["epoch", "mode", "layer", "stat", "value"]
    assert len(long) == 5  # the empty cell is dropped
    pd.testing.assert_frame_equal(
        wide(long), frame[["train-saturation_b", "loss", "train-saturation_a"]], check_like=True
    )


def test_load_results_matches_the_csv_read_by_pandas(npy_run):
    savefile, _ = npy_run
    results = load_results(savefile)
    assert list(results.columns) == ["epoch", "mode", "layer", "stat", "value"]
    raw = pd.read_csv(savefile + ".csv", sep=";", index_col=0, **EXACT_FLOATS)
    assert len(results) == int(raw.notna().sum().sum())
    for row in results.itertuples():
        if row.layer is not None:
            column = f"{row.mode}-{row.stat}_{row.layer}"
        elif row.mode is not None:
            column = f"{row.mode}-{row.stat}"
        else:
            column = row.stat
        assert raw.loc[row.epoch, column] == row.value
    assert set(results["stat"]) == {
        "saturation",
        "intrinsic-dimensionality",
        "covariance-trace",
        "average-saturation",
        "test_accuracy",
    }
    assert results[results["stat"] == "test_accuracy"]["value"].tolist() == [0.5, 0.75]
    # Same result from the CSV path itself.
    pd.testing.assert_frame_equal(load_results(savefile + ".csv"), results)


def test_stored_values_match_numpy(npy_run, ref):
    savefile, rows = npy_run
    results = load_results(savefile)
    for epoch in range(2):
        for mode in MODES:
            for layer in ("0", "2"):
                expected = ref.stats(rows[(epoch, mode, layer)])
                got = results[(results.epoch == epoch) & (results["mode"] == mode) & (results.layer == layer)]
                values = dict(zip(got["stat"], got["value"]))
                assert values["saturation"] == pytest.approx(expected["saturation"])
                assert values["intrinsic-dimensionality"] == expected["intrinsic-dimensionality"]
                assert values["covariance-trace"] == pytest.approx(expected["covariance-trace"], rel=1e-9)


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.999])
def test_recompute_at_another_threshold_matches_numpy(npy_run, ref, threshold):
    savefile, rows = npy_run
    recomputed = recompute(savefile + "/npy", threshold=threshold)
    assert list(recomputed.columns) == ["epoch", "mode", "layer", "stat", "value"]
    assert len(recomputed) == 2 * 2 * 2 * 2  # epochs x modes x layers x (saturation, idim)
    for row in recomputed.itertuples():
        cov = ref.cov(rows[(row.epoch, row.mode, row.layer)])
        if row.stat == "saturation":
            assert row.value == pytest.approx(ref.saturation(cov, threshold))
        else:
            assert row.stat == "intrinsic-dimensionality"
            assert row.value == ref.idim(cov, threshold)


def test_recompute_at_the_run_threshold_reproduces_the_logged_values(npy_run):
    savefile, _ = npy_run
    logged = load_results(savefile)
    recomputed = recompute(savefile + "/npy", threshold=0.99)
    merged = recomputed.merge(logged, on=["epoch", "mode", "layer", "stat"], suffixes=("_new", "_old"))
    assert len(merged) == len(recomputed)
    np.testing.assert_allclose(merged["value_new"], merged["value_old"])


def test_recompute_errors(tmp_path, npy_run):
    with pytest.raises(FileNotFoundError, match="no NPY results"):
        recompute(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        recompute(npy_run[0] + "/npy", threshold=1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no covariance matrices"):
        recompute(tmp_path / "empty")
    folder = tmp_path / "corrupt" / "train-covariance-matrix_fc"
    folder.mkdir(parents=True)
    (folder / "epoch_00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"cannot read .*epoch_00000\.npy"):
        recompute(tmp_path / "corrupt")


def test_reconstruct_csv_from_npy_data(npy_run, tmp_path, ref):
    savefile, rows = npy_run
    original = pd.read_csv(savefile + ".csv", sep=";", index_col=0, **EXACT_FLOATS)
    rebuilt = reconstruct_csv_from_npy_data(savefile + "/npy", savefile=tmp_path / "rebuilt")
    written = pd.read_csv(tmp_path / "rebuilt.csv", sep=";", index_col=0, **EXACT_FLOATS)
    # The tracker's CSV writes counts (intrinsic dimensionality) as integers; the rebuilt one as floats.
    pd.testing.assert_frame_equal(written, original[written.columns], check_names=False, check_dtype=False)
    assert set(written.columns) == set(original.columns)
    assert list(rebuilt.index) == [0, 1]
    # With a threshold, saturation columns are recomputed; the rest is kept.
    lowered = reconstruct_csv_from_npy_data(savefile + "/npy", threshold=0.5)
    cov = ref.cov(rows[(1, "train", "2")])
    assert lowered.loc[1, "train-saturation_2"] == pytest.approx(ref.saturation(cov, 0.5))
    assert lowered.loc[1, "test_accuracy"] == 0.75
    assert lowered.loc[1, "train-covariance-trace_2"] == original.loc[1, "train-covariance-trace_2"]


def test_npy_names_come_from_the_counters(tmp_path):
    from delve.output.results import read_npy_dir
    from delve.writers import NPYWriter

    writer = NPYWriter(str(tmp_path / "run"))
    writer.add_array("train-covariance-matrix_blocks/0", np.diag([2.0, 1.0]), 0)
    writer.close()
    index = read_npy_dir(tmp_path / "run" / "npy")
    assert list(index) == ["train-covariance-matrix_blocks/0"]
    assert recompute(tmp_path / "run" / "npy", 0.5)["layer"].tolist() == ["blocks/0", "blocks/0"]


def test_summary_table_and_text(npy_run):
    savefile, _ = npy_run
    results = load_results(savefile)
    table = summary_table(results)
    assert list(table.index) == ["0", "2"]
    assert list(table.columns)[:2] == ["train saturation", "train intrinsic-dimensionality"]
    last = results[(results.epoch == 1) & (results.layer == "2") & (results["mode"] == "eval")]
    assert table.loc["2", "eval saturation"] == last[last.stat == "saturation"]["value"].item()
    # One vocabulary: a statistic is selected by key or logged name, and headed by the word given.
    for word in ("saturation", "lsat"):
        lines = format_summary(results, stats=[word]).splitlines()
        assert lines[0] == "epoch 1"
        assert lines[1].split() == ["layer", "train", word, "eval", word]
        assert [line.split()[0] for line in lines[2:4]] == ["0", "2"]
        assert float(lines[3].split()[1]) == pytest.approx(table.loc["2", "train saturation"], abs=5e-5)
        assert "test_accuracy = 0.75" in lines[-1] and "train-average-saturation = " in lines[-1]
    assert summary_table(results, stats=["lsat"]).equals(summary_table(results, stats=["saturation"]))
    assert format_summary(results).splitlines()[1].split()[:3] == ["layer", "train", "lsat"]  # keys by default
    assert format_summary(results, epoch=0).splitlines()[0] == "epoch 0"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable delve CSV"),
        (b"\xff\xfe\x00garbage\x00", "not a readable delve CSV"),
        (b"just some words\n", "holds no epoch rows"),
        (b"epoch;a\nzero;0.5\n", "not a delve CSV: Unable to parse"),
        (b"epoch;a\n0.5;0.5\n", "integer epochs"),
        (b"epoch;a\n0;half\n", "not a delve CSV"),
    ],
)
def test_corrupt_csv_is_a_clear_value_error(tmp_path, content, message):
    (tmp_path / "run.csv").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_csv(tmp_path / "run")


def test_missing_csv_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no delve results at .*nothing\.csv"):
        load_results(tmp_path / "nothing")


def test_reconstruct_accepts_the_run_folder_and_the_0_1_threshold_keyword(npy_run, ref):
    savefile, rows = npy_run
    from_run_folder = reconstruct_csv_from_npy_data(savefile, thresh=0.5)
    from_npy_folder = reconstruct_csv_from_npy_data(savefile + "/npy", threshold=0.5)
    pd.testing.assert_frame_equal(from_run_folder, from_npy_folder)
    cov = ref.cov(rows[(0, "eval", "0")])
    assert from_run_folder.loc[0, "eval-intrinsic-dimensionality_0"] == ref.idim(cov, 0.5)
    with pytest.raises(ValueError, match="not both"):
        reconstruct_csv_from_npy_data(savefile, threshold=0.9, thresh=0.5)


def test_reconstruct_computes_the_0_1_stats_that_were_not_logged(npy_run, ref):
    """0.1.x's stats=: statistics never logged during training come from the saved covariances."""
    savefile, rows = npy_run
    rebuilt = reconstruct_csv_from_npy_data(savefile + "/npy", None, None, ["lsat", "erank", "det"])
    original = pd.read_csv(savefile + ".csv", sep=";", index_col=0, **EXACT_FLOATS)
    # lsat was logged: kept as stored; erank and det were not: computed at the run's threshold.
    np.testing.assert_allclose(rebuilt["train-saturation_0"], original["train-saturation_0"])
    for epoch in (0, 1):
        cov = ref.cov(rows[(epoch, "eval", "2")])
        values = ref.eigenvalues(cov)
        p = values / values.sum()
        p = p[p > 0]
        assert rebuilt.loc[epoch, "eval-effective-rank_2"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
        assert rebuilt.loc[epoch, "eval-covariance-log-determinant_2"] == pytest.approx(ref.logdet(cov))
    # With a threshold, every listed statistic is recomputed at it.
    lowered = reconstruct_csv_from_npy_data(savefile + "/npy", threshold=0.5, stats=["lsat", "idim", "pr"])
    cov = ref.cov(rows[(1, "train", "0")])
    assert lowered.loc[1, "train-saturation_0"] == pytest.approx(ref.saturation(cov, 0.5))
    values = ref.eigenvalues(cov)
    assert lowered.loc[1, "train-participation-ratio_0"] == pytest.approx(values.sum() ** 2 / (values**2).sum())
    with pytest.raises(ValueError, match="dorm cannot be computed from a saved covariance; accepted keys: lsat"):
        reconstruct_csv_from_npy_data(savefile + "/npy", stats=["dorm"])
