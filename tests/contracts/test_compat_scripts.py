"""Scripts written for delve 0.1.x run unchanged; what they leave on disk is read back and checked.

Each test body is a 0.1.x-style script (shortened), run in a temporary
working directory. The files it writes are read back with pandas, numpy and
matplotlib and compared with numpy references on activations captured by
separate hooks, and with the values the script itself logged.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg

MODES = ("train", "eval")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _read_csv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col=0)


def _assert_png_not_blank(path: Path) -> None:
    assert path.is_file(), path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    # A drawn figure has several distinct colours, not one flat fill.
    assert pixels[..., :3].std() > 0.01, path
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 10, path


# ------------------------------------------------------------------ gallery script
class TwoLayerNet(torch.nn.Module):
    def __init__(self, D_in, H, D_out):  # noqa: N803 (the gallery's names)
        super().__init__()
        self.linear1 = torch.nn.Linear(D_in, H)
        self.linear2 = torch.nn.Linear(H, D_out)

    def forward(self, x):
        h_relu = self.linear1(x).clamp(min=0)
        y_pred = self.linear2(h_relu)
        return y_pred


def test_gallery_regression_script(ref):
    """The 0.1.x gallery example ``extract-saturation.py``, with fewer steps and a smaller input."""
    from delve import SaturationTracker

    steps = 3
    captured = {}  # h -> {(layer, mode): rows of the last step}
    logged = {}  # h -> (train losses, test losses)

    device = torch.device("cpu")
    torch.manual_seed(1)

    for h in [3, 32]:
        N, D_in, H, D_out = 64, 100, h, 10

        x = torch.randn(N, D_in)
        y = torch.randn(N, D_out)
        x_test = torch.randn(N, D_in)
        y_test = torch.randn(N, D_out)

        model = TwoLayerNet(D_in, H, D_out)

        x, y, model = x.to(device), y.to(device), model.to(device)
        x_test, y_test = x_test.to(device), y_test.to(device)

        # Test harness only: capture what the tracked layers produce.
        rows = captured.setdefault(h, {})
        for name, layer in (("layer0", model.linear1), ("layer1", model.linear2)):
            layer.register_forward_hook(
                lambda m, i, o, name=name, rows=rows: rows.__setitem__(
                    (name, "train" if m.training else "eval"), o.detach()
                )
            )

        layers = [model.linear1, model.linear2]
        stats = SaturationTracker('regression/h{}'.format(h),  # noqa: UP032 (0.1.x script style)
                                  save_to="plotcsv",
                                  modules=layers,
                                  device=device,
                                  stats=["lsat", "lsat_eval"])

        loss_fn = torch.nn.MSELoss(reduction='sum')
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        train_losses, test_losses = logged[h] = ([], [])
        for _step in range(steps):
            model.train()
            y_pred = model(x)
            loss = loss_fn(y_pred, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            model.eval()
            y_pred = model(x_test)
            loss_test = loss_fn(y_pred, y_test)

            stats.add_scalar("train-loss", loss.item())
            stats.add_scalar("test-loss", loss_test.item())
            train_losses.append(loss.item())
            test_losses.append(loss_test.item())

            stats.add_saturations()
        stats.close()

    for h in [3, 32]:
        frame = _read_csv(f"regression/h{h}.csv")
        assert list(frame.index) == list(range(steps))
        expected_columns = {f"{mode}-saturation_{layer}" for mode in MODES for layer in ("layer0", "layer1")}
        assert expected_columns | {"train-loss", "test-loss"} == set(frame.columns)
        np.testing.assert_allclose(frame["train-loss"], logged[h][0], rtol=1e-6)
        np.testing.assert_allclose(frame["test-loss"], logged[h][1], rtol=1e-6)
        # The last epoch's saturations equal numpy's on the captured outputs.
        for (layer, mode), rows in captured[h].items():
            expected = ref.saturation(ref.cov(rows.numpy()), 0.99)
            assert frame.loc[steps - 1, f"{mode}-saturation_{layer}"] == pytest.approx(expected), (h, layer, mode)
        plots = Path(f"regression/h{h}/plots")
        for mode in MODES:
            _assert_png_not_blank(plots / f"saturation_{mode}_profile.png")
            _assert_png_not_blank(plots / f"saturation_{mode}_heatmap.png")
        _assert_png_not_blank(plots / "verdicts.png")
        # One current profile per mode, redrawn every epoch, the heatmaps and the verdict figure: no file per epoch.
        assert len(list(plots.glob("*.png"))) == 2 * len(MODES) + 1


# ---------------------------------------------------- writers given as instances
def _conv_net() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    )


def _train_classifier(model, tracker, epochs: int, captured: dict) -> list[float]:
    """A 0.1.x-style loop; returns the accuracies it logged."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(48, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 5, (48,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = torch.nn.CrossEntropyLoss()
    accuracies = []
    for _epoch in range(epochs):
        captured.clear()
        model.train()
        for batch, target in zip(images.split(16), labels.split(16)):
            optimizer.zero_grad()
            loss = criterion(model(batch), target)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = (model(images).argmax(1) == labels).sum().item()
        accuracies.append(correct / len(labels))
        tracker.add_scalar("test_accuracy", correct / len(labels))
        tracker.add_saturations()
    tracker.close()
    return accuracies


def _capture_conv_rows(model, captured: dict) -> None:
    def hook(module, inputs, output):
        mode = "train" if module.training else "eval"
        captured.setdefault(mode, []).append(output.detach().permute(0, 2, 3, 1).reshape(-1, 4).numpy())

    model[0].register_forward_hook(hook)


def test_writer_instances_mixed_with_keys_passed_positionally(ref, capsys):
    from delve.torchcallback import SaturationTracker
    from delve.writers import CSVandPlottingWriter, NPYWriter, PrintWriter

    torch.manual_seed(0)
    model = _conv_net()
    captured: dict = {}
    _capture_conv_rows(model, captured)

    savefile = "runs/conv"
    plotting = CSVandPlottingWriter(savefile, fontsize=16, primary_metric="test_accuracy")
    save_to = [plotting, "npy", PrintWriter(savefile)]
    tracker = SaturationTracker(savefile, save_to, model, stats=["lsat", "idim", "cov"])
    accuracies = _train_classifier(model, tracker, epochs=3, captured=captured)

    frame = _read_csv("runs/conv.csv")
    assert list(frame.index) == [0, 1, 2]
    np.testing.assert_allclose(frame["test_accuracy"], accuracies)
    for mode in MODES:
        rows = np.concatenate(captured[mode])
        assert frame.loc[2, f"{mode}-saturation_0"] == pytest.approx(ref.saturation(ref.cov(rows), 0.99))
        assert frame.loc[2, f"{mode}-intrinsic-dimensionality_0"] == ref.idim(ref.cov(rows), 0.99)
        # The covariance is an array: in the NPY files, not in the CSV.
        assert not any("covariance" in column for column in frame.columns)
        saved = np.load(f"runs/conv/npy/{mode}-covariance-matrix_0/epoch_00002.npy", allow_pickle=False)
        np.testing.assert_allclose(saved, ref.cov(rows), rtol=1e-9, atol=1e-12)
        saved_sat = np.load(f"runs/conv/npy/{mode}-saturation_3/epoch_00001.npy", allow_pickle=False)
        assert float(saved_sat) == frame.loc[1, f"{mode}-saturation_3"]
        _assert_png_not_blank(Path(f"runs/conv/plots/saturation_{mode}_profile.png"))
    printed = capsys.readouterr().out
    assert "test_accuracy" in printed and "epoch 2" in printed
    assert isinstance(tracker.writer.writers[0], CSVandPlottingWriter)
    assert any(isinstance(writer, NPYWriter) for writer in tracker.writer.writers)


def test_writer_args_as_fourth_positional_argument():
    from delve.torchcallback import SaturationTracker
    from delve.writers import CSVandPlottingWriter

    model = _conv_net()
    tracker = SaturationTracker("runs/args", "plotcsv", model, {"fontsize": 16, "primary_metric": "test_accuracy"})
    (writer,) = [w for w in tracker.writer.writers if isinstance(w, CSVandPlottingWriter)]
    assert writer.fontsize == 16 and writer.primary_metric == "test_accuracy"
    accuracies = _train_classifier(model, tracker, epochs=2, captured={})
    frame = _read_csv("runs/args.csv")
    np.testing.assert_allclose(frame["test_accuracy"], accuracies)
    assert {"train-saturation_0", "eval-saturation_3"} <= set(frame.columns)
    _assert_png_not_blank(Path("runs/args/plots/saturation_train_profile.png"))


def test_check_layer_sat_still_works_with_a_deprecation_warning():
    from delve import CheckLayerSat

    model = _conv_net()
    with pytest.warns(DeprecationWarning, match="SaturationTracker"):
        tracker = CheckLayerSat("runs/old", "csv", model)
    _train_classifier(model, tracker, epochs=1, captured={})
    assert "train-saturation_3" in _read_csv("runs/old.csv").columns


# ----------------------------------------------------------------- delve.tools
def _npy_run(ref) -> tuple[pd.DataFrame, dict]:
    from delve.torchcallback import SaturationTracker

    torch.manual_seed(0)
    model = _conv_net()
    captured: dict = {}
    _capture_conv_rows(model, captured)
    tracker = SaturationTracker("runs/npy", ["csv", "npy"], model, stats=["lsat", "idim", "cov"])
    _train_classifier(model, tracker, epochs=2, captured=captured)
    return _read_csv("runs/npy.csv"), captured


def test_tools_reconstruct_csv_from_npy_folder(ref):
    tools = importlib.import_module("delve.tools")
    frame, captured = _npy_run(ref)

    rebuilt = tools.reconstruct_csv_from_npy_data("runs/npy/npy", "rebuilt.csv")
    on_disk = _read_csv("rebuilt.csv")
    # The tracker's CSV writes counts (intrinsic dimensionality) as integers; the rebuilt table holds floats.
    for table in (rebuilt, on_disk):
        pd.testing.assert_frame_equal(
            table[frame.columns].reset_index(drop=True),
            frame.reset_index(drop=True),
            check_names=False,
            check_dtype=False,
        )
    # Recomputed from the stored covariances at another threshold (this version's keyword).
    recomputed = tools.reconstruct_csv_from_npy_data("runs/npy/npy", threshold=0.5)
    for mode in MODES:
        cov = ref.cov(np.concatenate(captured[mode]))
        assert recomputed[f"{mode}-intrinsic-dimensionality_0"].iloc[-1] == ref.idim(cov, 0.5)
        assert recomputed[f"{mode}-saturation_0"].iloc[-1] == pytest.approx(ref.saturation(cov, 0.5))



def test_tools_reconstruct_csv_recomputes_at_another_threshold_with_the_0_1_keyword(ref):
    # 0.1.x spelling: ``thresh=`` recomputes from the stored covariances.
    tools = importlib.import_module("delve.tools")
    _, captured = _npy_run(ref)
    recomputed = tools.reconstruct_csv_from_npy_data("runs/npy/npy", "recomputed.csv", thresh=0.5)
    rows = np.concatenate(captured["train"])
    assert recomputed["train-intrinsic-dimensionality_0"].iloc[-1] == ref.idim(ref.cov(rows), 0.5)
    assert _read_csv("recomputed.csv")["train-saturation_0"].iloc[-1] == pytest.approx(
        ref.saturation(ref.cov(rows), 0.5)
    )


def test_tools_reconstruct_csv_from_the_path_the_npy_writer_was_given(ref):
    # 0.1.x scripts pass the NPY writer's savepath, i.e. the tracker's savefile.
    tools = importlib.import_module("delve.tools")
    frame, _ = _npy_run(ref)
    rebuilt = tools.reconstruct_csv_from_npy_data("runs/npy")
    pd.testing.assert_frame_equal(
        rebuilt[frame.columns].reset_index(drop=True),
        frame.reset_index(drop=True),
        check_names=False,
        check_dtype=False,
    )
