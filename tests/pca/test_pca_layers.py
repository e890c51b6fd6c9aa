"""PCA layers: fit on training data, project in evaluation, checked against numpy."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.pca import (
    Conv2DPCALayer,
    LinearPCALayer,
    change_all_pca_layer_thresholds,
    change_all_pca_layer_thresholds_and_inject_random_directions,
    random_orthonormal,
)


def _subspace_data(n: int, d: int, k: int, seed: int, offset: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` rows in a ``k``-dim subspace of R^d (affine when ``offset``), comparable variance per direction."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, k)))
    scales = rng.uniform(1.0, 2.0, size=k)
    shift = offset * rng.standard_normal(d)
    rows = (rng.standard_normal((n, k)) * scales) @ basis.T + shift
    return torch.from_numpy(rows), basis


def _numpy_projection(
    train: np.ndarray, threshold: float, centering: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference fit: population (second) moment of the rows, eigh, smallest k reaching ``threshold``."""
    mean = train.mean(axis=0)
    centred = train - mean if centering else train
    moment = centred.T @ centred / len(train)
    values, vectors = np.linalg.eigh(moment)
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    share = np.cumsum(values) / values.sum()
    k = max(1, int(np.count_nonzero(share < threshold)) + 1)
    v = vectors[:, :k]
    return v @ v.T, (mean if centering else np.zeros_like(mean)), k


def _feed(layer: nn.Module, batches: list[torch.Tensor]) -> None:
    layer.train()
    for batch in batches:
        out = layer(batch)
        if isinstance(layer, LinearPCALayer):
            assert out is batch  # training mode passes the very tensor through
    layer.eval()


# ---------------------------------------------------------------- LinearPCALayer
def test_subspace_data_is_reproduced_losslessly():
    x, _ = _subspace_data(600, 10, 3, seed=0, offset=5.0)
    layer = LinearPCALayer(10, threshold=0.99).double()
    _feed(layer, list(x.split(128)))
    out = layer(x)
    assert layer.n_components == 3 and layer.in_dim == 3 and layer.fs_dim == 10
    assert layer.sat == pytest.approx(30.0)
    np.testing.assert_allclose(out.numpy(), x.numpy(), atol=1e-5)
    # Unseen rows of the same affine subspace are reproduced as well.
    fresh, _ = _subspace_data(50, 10, 3, seed=0, offset=5.0)
    np.testing.assert_allclose(layer(fresh).numpy(), fresh.numpy(), atol=1e-5)


@pytest.mark.parametrize("centering", [True, False])
def test_projection_matches_numpy(centering):
    rng = np.random.default_rng(1)
    train = rng.standard_normal((900, 8)) * np.array([6.0, 4, 3, 1, 0.3, 0.1, 0.05, 0.01]) + 2.0
    test = rng.standard_normal((40, 8)) * 2.0
    layer = LinearPCALayer(8, threshold=0.95, centering=centering)
    _feed(layer, [torch.from_numpy(b).float() for b in np.array_split(train, 7)])
    out = layer(torch.from_numpy(test).float()).numpy()
    projection, mean, k = _numpy_projection(train, 0.95, centering)
    assert layer.n_components == k
    np.testing.assert_allclose(out, (test - mean) @ projection + mean, atol=2e-5)


def test_uncentred_layer_reproduces_a_linear_subspace():
    x, _ = _subspace_data(400, 6, 2, seed=2)
    layer = LinearPCALayer(6, centering=False).double()
    _feed(layer, [x])
    np.testing.assert_allclose(layer(x).numpy(), x.numpy(), atol=1e-5)
    assert layer.n_components == 2


def test_keepdim_false_returns_the_coordinates():
    x, _ = _subspace_data(300, 7, 2, seed=3, offset=1.0)
    layer = LinearPCALayer(7, keepdim=False).double()
    _feed(layer, [x])
    coordinates = layer(x)
    assert coordinates.shape == (300, 2)
    basis = layer.basis[:, :2]
    np.testing.assert_allclose((coordinates @ basis.T + layer.mean).numpy(), x.numpy(), atol=1e-6)
    # Coordinates are centred: the mean of the training rows maps to 0.
    np.testing.assert_allclose(coordinates.mean(0).numpy(), 0.0, atol=1e-8)


def test_leading_dimensions_are_samples():
    x, _ = _subspace_data(240, 5, 2, seed=4, offset=1.0)
    layer = LinearPCALayer(5).double()
    _feed(layer, [x.reshape(8, 30, 5)])
    projection, mean, _ = _numpy_projection(x.numpy(), 0.99)
    probe = torch.randn(3, 4, 5, dtype=torch.float64)
    np.testing.assert_allclose(layer(probe).numpy(), (probe.numpy() - mean) @ projection + mean, atol=1e-5)


def test_each_training_phase_is_fitted_on_its_own_data():
    layer = LinearPCALayer(4, threshold=0.9)
    _feed(layer, [torch.randn(500, 4) * torch.tensor([10.0, 0.1, 0.1, 0.1])])
    layer(torch.zeros(1, 4))
    assert layer.n_components == 1 and layer.epoch == 1
    _feed(layer, [torch.randn(500, 4)])  # isotropic: needs all four directions
    layer(torch.zeros(1, 4))
    assert layer.n_components == 4 and layer.epoch == 2
    layer(torch.zeros(1, 4))  # a second evaluation pass keeps the fit
    assert layer.epoch == 2


def test_training_forward_under_inference_mode_then_ordinary_forward():
    rows = torch.randn(120, 3, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.01], dtype=torch.float64)
    layer = LinearPCALayer(3).double()
    with torch.inference_mode():
        layer(rows[:60])
    layer(rows[60:])  # in-place update of state allocated under inference mode
    layer.eval()
    projection, mean, _ = _numpy_projection(rows.numpy(), 0.99)
    probe = torch.randn(4, 3, dtype=torch.float64)
    np.testing.assert_allclose(layer(probe).numpy(), (probe.numpy() - mean) @ projection + mean, atol=1e-5)


def test_fresh_layer_in_eval_passes_through_with_a_warning():
    layer = LinearPCALayer(3).eval()
    x = torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="no training data"):
        out = layer(x)
    assert torch.equal(out, x)
    assert not layer.is_fitted


def test_threshold_change_reselects_directions():
    # Variances 100, 10, 1, 0.1 (total 111.1): shares 0.9001, 0.9901, 0.99910, 1.
    scales = torch.tensor([10.0, 10**0.5, 1.0, 0.1**0.5], dtype=torch.float64)
    rows = torch.randn(20000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = rows - rows.mean(0)
    # Whiten exactly, so the population covariance is diag(scales^2).
    cholesky = torch.linalg.cholesky(rows.T @ rows / len(rows))
    rows = torch.linalg.solve_triangular(cholesky, rows.T, upper=False).T
    layer = LinearPCALayer(4).double()
    _feed(layer, [rows * scales])
    layer(rows[:1])
    expected = {0.5: 1, 0.95: 2, 0.995: 3, 1.0: 4}
    for threshold, k in expected.items():
        layer.threshold = threshold
        assert layer.n_components == k, threshold
        projection = layer.transformation_matrix.double()
        torch.testing.assert_close(projection @ projection, projection, atol=1e-6, rtol=0)
        assert float(torch.trace(projection)) == pytest.approx(k, abs=1e-6)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="threshold"):
        LinearPCALayer(3, threshold=1.5)
    with pytest.raises(ValueError, match="in_features"):
        LinearPCALayer(0)
    with pytest.raises(ValueError, match="expects 3 features"):
        LinearPCALayer(3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="threshold"):
        change_all_pca_layer_thresholds(0.0, nn.Sequential(LinearPCALayer(2)))
    with pytest.raises(ValueError, match="N, C, H, W"):
        Conv2DPCALayer(3)(torch.randn(2, 3))


# ---------------------------------------------------------------- Conv2DPCALayer
def test_conv_layer_any_spatial_size_no_parameters_and_channelwise_fit():
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((2, 6))  # 6 channels spanning a 2-dim subspace
    maps = np.einsum("nkhw,kc->nchw", rng.standard_normal((16, 2, 9, 9)), mixing)
    layer = Conv2DPCALayer(6, centering=True, verbose=False).double()
    assert list(layer.parameters()) == []
    _feed(layer, [torch.from_numpy(b) for b in np.array_split(maps, 4)])
    probe = np.einsum("nkhw,kc->nchw", rng.standard_normal((3, 2, 5, 7)), mixing)
    out = layer(torch.from_numpy(probe))
    assert layer.n_components == 2 and out.shape == (3, 6, 5, 7)
    np.testing.assert_allclose(out.numpy(), probe, atol=1e-5)

    # Noisy maps: the projection equals numpy's channelwise reference.
    noisy = torch.from_numpy(maps + 0.05 * rng.standard_normal(maps.shape))
    layer = Conv2DPCALayer(6, threshold=0.9, centering=True, verbose=False).double()
    _feed(layer, [noisy])
    rows = noisy.numpy().transpose(0, 2, 3, 1).reshape(-1, 6)
    projection, mean, k = _numpy_projection(rows, 0.9)
    out = layer(torch.from_numpy(probe)).numpy().transpose(0, 2, 3, 1)
    expected = (probe.transpose(0, 2, 3, 1) - mean) @ projection + mean
    assert layer.n_components == k
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_conv_layer_downsampling_only_affects_the_fit():
    x = torch.randn(2, 3, 16, 16)
    layer = Conv2DPCALayer(3, downsampling=4, verbose=False)
    _feed(layer, [x])
    small = torch.nn.functional.interpolate(x, size=(4, 4), mode="nearest")
    assert layer.covariance.shape == (3, 3)
    reference = small.permute(0, 2, 3, 1).reshape(-1, 3).double()
    expected = torch.cov(reference.T, correction=0)
    layer(x[:1])  # the first eval forward fits
    torch.testing.assert_close(layer.covariance, expected, rtol=1e-9, atol=1e-12)
    assert layer(x).shape == x.shape


def test_conv_layer_downsampling_keeps_the_aspect_ratio_as_the_tracker_does():
    """A 32x8 map shrunk to a longest side of 8 becomes 8x2, as in the tracker's observation path."""
    x = torch.randn(2, 3, 32, 8)
    layer = Conv2DPCALayer(3, downsampling=8, verbose=False)
    _feed(layer, [x])
    small = torch.nn.functional.interpolate(x, size=(8, 2), mode="nearest")
    expected = torch.cov(small.permute(0, 2, 3, 1).reshape(-1, 3).double().T, correction=0)
    layer(x[:1])  # the first eval forward fits
    torch.testing.assert_close(layer.covariance, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------- random directions
def test_random_directions_change_the_outputs():
    x, _ = _subspace_data(500, 12, 3, seed=6, offset=2.0)
    net = nn.Sequential(nn.Identity(), LinearPCALayer(12).double())
    _feed(net, [x])
    eigen_out = net(x)
    np.testing.assert_allclose(eigen_out.numpy(), x.numpy(), atol=1e-5)
    sat, in_dims, fs_dims, names = change_all_pca_layer_thresholds_and_inject_random_directions(
        0.99, net, include_names=True, generator=torch.Generator().manual_seed(0)
    )
    assert (sat, in_dims, fs_dims, names) == ([25.0], [3], [12], ["1"])
    random_out = net(x)
    # Three random directions of R^12 lose most of a 3-dim subspace's variance.
    lost = ((random_out - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(lost) > 0.3
    layer = net[1]
    basis = layer.basis[:, :3]
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    # Back to the eigendirections when the threshold is set again.
    change_all_pca_layer_thresholds(0.99, net)
    np.testing.assert_allclose(net(x).numpy(), x.numpy(), atol=1e-5)


def test_change_all_thresholds_visits_every_pca_layer():
    net = nn.Sequential(
        nn.Conv2d(2, 4, 1), Conv2DPCALayer(4, verbose=False), nn.Flatten(), nn.Linear(4 * 9, 5), LinearPCALayer(5)
    )
    _feed(net, [torch.randn(30, 2, 3, 3)])
    net(torch.randn(1, 2, 3, 3))
    sat, in_dims, fs_dims, names = change_all_pca_layer_thresholds(1.0, net)
    assert names == ["1", "4"] and fs_dims == [4, 5]
    assert all(layer.threshold == 1.0 for layer in (net[1], net[4]))
    assert sat == [100.0 * k / d for k, d in zip(in_dims, fs_dims)]
    three = change_all_pca_layer_thresholds_and_inject_random_directions(0.5, net)
    assert len(three) == 3


def test_random_orthonormal_is_orthonormal_and_reproducible():
    a = random_orthonormal(9, 4, torch.Generator().manual_seed(3))
    b = random_orthonormal(9, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (9, 4)
    torch.testing.assert_close(a.T @ a, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        random_orthonormal(3, 4)


# -------------------------------------------------------------- persistence
def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_restores_the_projection():
    x, _ = _subspace_data(300, 6, 2, seed=7, offset=1.0)
    x = x.float()
    layer = LinearPCALayer(6, threshold=0.9)
    _feed(layer, [x])
    probe = torch.randn(5, 6)
    expected = layer(probe)
    restored = LinearPCALayer(6).eval()
    restored.load_state_dict(_round_trip(layer.state_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a loaded layer is fitted: no pass-through warning
        torch.testing.assert_close(restored(probe), expected)
    assert restored.threshold == 0.9 and restored.n_components == layer.n_components and restored.is_fitted
    assert {"mean", "transformation_matrix", "eigenvalues", "eigenvectors"} <= set(layer.state_dict())


def test_model_state_dict_round_trip_restores_nested_layers():
    def make() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(2, 3, 1), Conv2DPCALayer(3, threshold=0.8, verbose=False))

    model = make()
    _feed(model, [torch.randn(4, 2, 5, 5)])
    probe = torch.randn(1, 2, 6, 3)
    expected = model(probe)
    restored = make().eval()
    restored.load_state_dict(_round_trip(model.state_dict()))
    assert restored[1].is_fitted and restored[1].n_components == model[1].n_components
    torch.testing.assert_close(restored(probe), expected)


def test_partial_accumulation_travels_with_the_state_dict():
    rng = np.random.default_rng(8)
    data = torch.from_numpy(rng.standard_normal((400, 5)) * np.array([5.0, 3, 1, 0.2, 0.1]))
    whole = LinearPCALayer(5, threshold=0.97).double()
    _feed(whole, [data])
    first = LinearPCALayer(5, threshold=0.97).double()
    first(data[:150])  # training mode
    second = LinearPCALayer(5).double()
    second.load_state_dict(_round_trip(first.state_dict()))
    _feed(second, [data[150:]])
    probe = torch.from_numpy(rng.standard_normal((6, 5)))
    torch.testing.assert_close(second(probe), whole(probe))


def test_buffers_follow_dtype_and_device_moves():
    layer = LinearPCALayer(4)
    _feed(layer, [torch.randn(100, 4)])
    layer(torch.randn(1, 4))
    layer = layer.to(torch.float64)
    assert layer.transformation_matrix.dtype == torch.float64
    assert layer(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_layer_moves_to_cuda_mid_accumulation():
    rng = np.random.default_rng(9)
    data = torch.from_numpy(rng.standard_normal((300, 4)) * np.array([4.0, 2, 1, 0.01])).float()
    reference = LinearPCALayer(4)
    _feed(reference, [data])
    layer = LinearPCALayer(4)
    layer(data[:100])
    layer = layer.cuda()
    layer(data[100:].cuda())
    layer.eval()
    probe = torch.randn(3, 4)
    out = layer(probe.cuda())
    assert out.device.type == "cuda" and layer.mean.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), reference(probe), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------ inside a tracked model
def test_pca_layer_inside_a_tracked_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), LinearPCALayer(6, threshold=0.9), nn.Linear(6, 4)).double()
    tracker = SaturationTracker("pca", modules=model, stats=["idim", "lsat"], sat_threshold=0.999, nosave=True)
    assert tracker.layer_names == ["0", "2"]  # the PCA layer itself is not a tracked kind

    scales = torch.tensor([5.0, 4.0, 3.0, 0.3, 0.2, 0.1], dtype=torch.float64)
    train = [torch.randn(64, 6, dtype=torch.float64) * scales for _ in range(5)]
    test = torch.randn(200, 6, dtype=torch.float64) * scales
    model.train()
    for batch in train:
        model(batch)
    model.eval()
    with torch.no_grad():
        model(test)
    values = tracker.add_saturations()
    tracker.close()

    # Reference: numpy on the concatenated hidden activations.
    with torch.no_grad():
        w1, b1 = model[0].weight.numpy(), model[0].bias.numpy()
        w2, b2 = model[2].weight.numpy(), model[2].bias.numpy()
    hidden_train = np.concatenate([b.numpy() for b in train]) @ w1.T + b1
    projection, mean, k = _numpy_projection(hidden_train, 0.9)
    assert model[1].n_components == k < 6
    hidden_test = test.numpy() @ w1.T + b1
    out_test = ((hidden_test - mean) @ projection + mean) @ w2.T + b2
    values_test = np.clip(np.linalg.eigvalsh(np.cov(out_test.T, bias=True))[::-1], 0, None)
    share = np.cumsum(values_test) / values_test.sum()
    expected_idim = int(np.count_nonzero(share < 0.999)) + 1
    assert expected_idim <= k
    assert values["eval-intrinsic-dimensionality_2"] == expected_idim
    # Training passes were not projected: layer 2 saw the full hidden space.
    out_train = hidden_train @ w2.T + b2
    values_train = np.clip(np.linalg.eigvalsh(np.cov(out_train.T, bias=True))[::-1], 0, None)
    share = np.cumsum(values_train) / values_train.sum()
    assert values["train-intrinsic-dimensionality_2"] == int(np.count_nonzero(share < 0.999)) + 1
    assert values["train-saturation_0"] == values["train-intrinsic-dimensionality_0"] / 6
