"""Layer discovery, naming, filters and wrappers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.capture.discovery import describe_module, discover_layers, unwrap_model


class Net(nn.Module):
    """A small model with nesting, every supported kind and some untracked modules."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ConvTranspose2d(4, 2, 2))
        )
        self.rnn = nn.GRU(4, 4)
        self.attention = nn.MultiheadAttention(4, 2)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


def names(layers) -> list[str]:
    return [layer.name for layer in layers]


def test_recursive_discovery_in_registration_order():
    model = Net()
    layers = discover_layers(model)
    assert names(layers) == [
        "features-0",
        "features-2-0",
        "features-2-1",
        "rnn",
        "attention",  # its out_proj Linear is part of it, not a layer of its own
        "classifier-1",
        "classifier-3",
    ]
    assert [layer.qualified_name for layer in layers][:2] == ["features.0", "features.2.0"]
    assert layers[0].module is model.features[0]
    assert {layer.kind for layer in layers} == {"conv", "recurrent", "attention", "linear"}


def test_list_of_modules_gets_positional_names():
    first = nn.Linear(3, 3)
    block = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Conv1d(1, 1, 1))
    layers = discover_layers([first, block])
    assert names(layers) == ["layer0", "layer1-0", "layer1-2"]
    assert layers[0].module is first and layers[2].module is block[2]


def test_dict_keys_name_the_layers():
    encoder = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    head = nn.Linear(2, 1)
    assert names(discover_layers({"enc": encoder, "head": head})) == ["enc-0", "enc-1", "head"]


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="share the names"):
        discover_layers({"a": nn.Sequential(nn.Linear(2, 2)), "a-0": nn.Linear(2, 2)})


@pytest.mark.parametrize("pattern", ["features.*", "features-*", "features", ["features.0", "features.2"]])
def test_layer_filter_names_and_globs(pattern):
    assert names(discover_layers(Net(), layer_filter=pattern)) == ["features-0", "features-2-0", "features-2-1"]


def test_layer_filter_single_dashed_name():
    assert names(discover_layers(Net(), layer_filter="classifier-3")) == ["classifier-3"]


def test_layer_filter_callable_receives_layer_names():
    seen = []

    def keep(name: str) -> bool:
        seen.append(name)
        return name.startswith("classifier")

    assert names(discover_layers(Net(), layer_filter=keep)) == ["classifier-1", "classifier-3"]
    assert "features-2-1" in seen


def test_ignore_layer_names_names_and_globs():
    kept = names(discover_layers(Net(), ignore_layer_names=["features.2.*", "rnn", "classifier-1"]))
    assert kept == ["features-0", "attention", "classifier-3"]
    assert names(discover_layers(Net(), ignore_layer_names="features")) == [
        "rnn",
        "attention",
        "classifier-1",
        "classifier-3",
    ]


@pytest.mark.parametrize("argument", ["layer_filter", "ignore_layer_names"])
def test_pattern_that_matches_nothing_is_an_error(argument):
    with pytest.raises(ValueError, match=r"'decoder\.\*' matches no tracked layer.*features-0"):
        discover_layers(Net(), **{argument: "decoder.*"})


def test_pattern_entries_must_be_strings():
    with pytest.raises(ValueError, match="strings"):
        discover_layers(Net(), layer_filter=["features", 3])


def test_include_conv_false_drops_every_convolution():
    kept = discover_layers(Net(), include_conv=False)
    assert names(kept) == ["rnn", "attention", "classifier-1", "classifier-3"]
    assert all(not isinstance(layer.module, (nn.Conv2d, nn.ConvTranspose2d)) for layer in kept)


def test_include_conv_false_through_the_tracker_records_no_conv():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with SaturationTracker("unused", modules=model, include_conv=False, nosave=True) as tracker:
        model(torch.randn(5, 1, 6, 6))
        values = tracker.add_saturations()
    assert list(values) == ["train-saturation_2"]
    assert len(model[0]._forward_hooks) == 0


def test_nothing_to_track():
    with pytest.raises(ValueError, match="nothing to track"):
        discover_layers(nn.Sequential(nn.ReLU(), nn.Dropout()))
    with pytest.raises(ValueError, match="nothing to track"):
        discover_layers(nn.Conv2d(1, 1, 1), include_conv=False)
    with pytest.raises(ValueError, match="nothing to track"):
        discover_layers(Net(), layer_filter=lambda name: False)
    with pytest.raises(ValueError, match="nothing to track"):
        SaturationTracker("unused", modules=nn.Sequential(nn.Tanh()), nosave=True)


@pytest.mark.parametrize("modules", [5, "model", [nn.Linear(2, 2), "x"], {"a": 1}])
def test_bad_modules_argument(modules):
    with pytest.raises(ValueError, match="modules"):
        discover_layers(modules)


def test_a_single_tracked_module_is_named_after_its_type():
    assert names(discover_layers(nn.Linear(3, 2))) == ["linear"]


def test_shared_module_is_hooked_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert names(discover_layers(model)) == ["0"]


def test_data_parallel_wrapper_is_unwrapped():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    layers = discover_layers(wrapped)
    assert names(layers) == ["0", "1"]
    assert layers[0].module is model[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compiled_wrapper_is_unwrapped():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    compiled = torch.compile(model)  # nothing is compiled until it is called
    assert unwrap_model(compiled) is model
    assert names(discover_layers(compiled)) == ["0", "1"]
    assert names(discover_layers(nn.DataParallel(compiled))) == ["0", "1"]


def test_tracker_layer_names_follow_discovery_before_any_forward():
    with SaturationTracker("unused", modules=Net(), layer_filter="classifier", nosave=True) as tracker:
        assert tracker.layer_names == ["classifier-1", "classifier-3"]


def test_a_layer_is_described_by_its_class_and_shape():
    class Conv1D(nn.Module):  # transformers' GPT-2 projection keeps its shape as nx -> nf
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.nf, self.nx = nf, nx
            self.weight = nn.Parameter(torch.zeros(nx, nf))

    class Gate(nn.Module):
        pass

    cases = {
        nn.Linear(256, 128): "Linear 256->128",
        nn.Conv2d(3, 16, 3): "Conv2d 3->16",
        nn.ConvTranspose1d(8, 4, 2): "ConvTranspose1d 8->4",
        nn.GRU(10, 20): "GRU 10->20",
        nn.LSTM(8, 32, bidirectional=True): "LSTM 8->2x32",
        nn.MultiheadAttention(64, 4): "MultiheadAttention 64",
        Conv1D(2304, 768): "Conv1D 768->2304",
        Gate(): "Gate",
    }
    assert {describe_module(module): text for module, text in cases.items()} == {t: t for t in cases.values()}
