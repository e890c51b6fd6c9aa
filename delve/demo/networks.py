"""The demo's data and networks: scikit-learn's digits and two CNNs of the same depth.

The data set ships inside scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "DemoNetwork",
    "DEMO_NETWORKS",
    "MissingDemoDependencyError",
    "TEST_FRACTION",
    "build_network",
    "layer_widths",
    "load_digits_tensors",
]

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DemoNetwork:
    """The widths of one demo network.

    Attributes
    ----------
    name : str
        The run's file prefix (``<out_dir>/<name>.csv``).
    channels : tuple of int
        Output channels of the three 3x3 convolutions.
    hidden : int
        Width of the hidden fully connected layer.
    """

    name: str
    channels: tuple[int, int, int]
    hidden: int


#: The two networks trained side by side: same depth, four times the width.
DEMO_NETWORKS = (
    DemoNetwork("lean", (8, 16, 16), 32),
    DemoNetwork("wide", (32, 64, 64), 128),
)


class MissingDemoDependencyError(ImportError):
    """scikit-learn, which provides the digits data set, is not installed."""


def load_digits_tensors(
    test_fraction: float = TEST_FRACTION, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)`` tensors.

    Images are ``(n, 1, 8, 8)`` float32 scaled to ``[0, 1]``; the split is a
    fixed random permutation of the 1797 images.

    Raises
    ------
    MissingDemoDependencyError
        When scikit-learn is not installed.

    Examples
    --------
    >>> x_train, y_train, x_test, y_test = load_digits_tensors()
    >>> tuple(x_train.shape), tuple(x_test.shape), int(y_train.max())
    ((1438, 1, 8, 8), (359, 1, 8, 8), 9)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise MissingDemoDependencyError(
            "the delve demo trains on scikit-learn's digits data set, and scikit-learn is not installed; "
            "install it with `pip install delve[demo]` (in a clone: `pip install -r requirements/demo.txt`)"
        ) from error
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def build_network(spec: DemoNetwork) -> nn.Sequential:
    """A three-convolution CNN for 8x8 single-channel images and 10 classes.

    The layers are named ``conv1``-``conv3``, ``fc1`` and ``fc2``, which
    become the tracker's layer names.

    Examples
    --------
    >>> model = build_network(DemoNetwork("tiny", (2, 3, 4), 5))
    >>> model(torch.zeros(7, 1, 8, 8)).shape
    torch.Size([7, 10])
    """
    c1, c2, c3 = spec.channels
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, c1, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(c1, c2, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),  # 8x8 -> 4x4
                ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
                ("relu3", nn.ReLU()),
                ("pool3", nn.MaxPool2d(2)),  # 4x4 -> 2x2
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(4 * c3, spec.hidden)),
                ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(spec.hidden, 10)),
            ]
        )
    )


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Feature size ``d`` of every convolution and Linear layer, by name.

    Examples
    --------
    >>> layer_widths(build_network(DEMO_NETWORKS[0]))
    {'conv1': 8, 'conv2': 16, 'conv3': 16, 'fc1': 32, 'fc2': 10}
    """
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths
