"""Thresholds of every PCA layer of a network at once, and the random-directions control.

The function names are delve 0.1.x's; they find the layers by their class
(:class:`~delve.pca.linear.LinearPCALayer` and its subclasses).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..common.naming import layer_name
from ..common.validation import check_fraction
from .linear import LinearPCALayer

__all__ = ["change_all_pca_layer_thresholds", "change_all_pca_layer_thresholds_and_inject_random_directions"]

logger = logging.getLogger("delve")


def _pca_layers(network: nn.Module) -> list[tuple[str, LinearPCALayer]]:
    return [(layer_name(name) or "pca", m) for name, m in network.named_modules() if isinstance(m, LinearPCALayer)]


def change_all_pca_layer_thresholds(
    threshold: float, network: nn.Module, verbose: bool = False
) -> tuple[list[float], list[int], list[int], list[str]]:
    """Set the threshold of every PCA layer in ``network``.

    Fitted layers re-select their eigendirections from the spectrum they
    already hold; nothing is recomputed from data.

    Parameters
    ----------
    threshold : float
        New fraction of variance, in ``(0, 1]``.
    network : nn.Module
        Searched recursively for :class:`~delve.pca.layers.LinearPCALayer` and
        :class:`~delve.pca.layers.Conv2DPCALayer` modules.
    verbose : bool
        Log each change at INFO level.

    Returns
    -------
    sat, in_dims, fs_dims, names : lists
        Per layer, in module order: saturation in percent, kept dimensions
        ``k``, feature size ``d`` and the layer's name (qualified name with
        ``.`` replaced by ``-``).

    Examples
    --------
    >>> from delve.pca import LinearPCALayer
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), LinearPCALayer(4))
    >>> _ = net(torch.randn(64, 4)); _ = net.eval(); _ = net(torch.randn(1, 4))
    >>> sat, in_dims, fs_dims, names = change_all_pca_layer_thresholds(0.01, net)
    >>> in_dims, fs_dims, names
    ([1], [4], ['1'])
    """
    sat: list[float] = []
    in_dims: list[int] = []
    fs_dims: list[int] = []
    names: list[str] = []
    threshold = check_fraction("threshold", threshold)
    for name, layer in _pca_layers(network):
        layer.threshold = threshold
        sat.append(layer.sat)
        in_dims.append(layer.in_dim)
        fs_dims.append(layer.fs_dim)
        names.append(name)
        if verbose:
            logger.info(
                "PCA layer %s: threshold %s keeps %d of %d directions", name, threshold, layer.in_dim, layer.fs_dim
            )
    return sat, in_dims, fs_dims, names


def change_all_pca_layer_thresholds_and_inject_random_directions(
    threshold: float,
    network: nn.Module,
    verbose: bool = False,
    device: Any = None,
    include_names: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> tuple[list, ...]:
    """Set every PCA layer's threshold, then swap its eigendirections for random ones.

    Each layer keeps the dimension ``k`` its threshold selects but projects
    onto ``k`` random orthonormal directions: the control experiment showing
    that *which* directions are kept matters, not only how many.

    Parameters
    ----------
    threshold, network, verbose
        As in :func:`change_all_pca_layer_thresholds`.
    device : optional
        Accepted for delve 0.1.x scripts; the random matrices go where each
        layer's buffers are.
    include_names : bool
        Also return the layer names.
    generator : torch.Generator, optional
        For reproducible directions.

    Returns
    -------
    tuple
        ``(sat, in_dims, fs_dims)``, plus ``names`` when ``include_names``.

    Examples
    --------
    >>> from delve.pca import LinearPCALayer
    >>> net = torch.nn.Sequential(LinearPCALayer(4))
    >>> _ = net(torch.randn(64, 4)); _ = net.eval(); _ = net(torch.randn(1, 4))
    >>> sat, in_dims, fs_dims = change_all_pca_layer_thresholds_and_inject_random_directions(0.5, net)
    >>> fs_dims
    [4]
    """
    sat, in_dims, fs_dims, names = change_all_pca_layer_thresholds(threshold, network, verbose)
    for _, layer in _pca_layers(network):
        layer.inject_random_directions(generator)
    if include_names:
        return sat, in_dims, fs_dims, names
    return sat, in_dims, fs_dims
