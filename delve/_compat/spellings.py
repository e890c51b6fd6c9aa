"""Everything kept for scripts written against delve 0.1.x, in one place.

* ``CheckLayerSat``: :func:`deprecated_alias` of ``SaturationTracker``, warns when built;
* ``writer_args`` as the fourth positional argument of the tracker:
  :func:`split_positional_writer_args`;
* ``stats=["lsat_eval", ...]``: :func:`strip_mode_suffix`;
* the PCA layers' ``in_dim``, ``fs_dim``, ``sat`` and ``gradient_epoch_start``:
  :class:`LegacyPCANames`;
* ``change_all_pca_layer_thresholds`` and
  ``change_all_pca_layer_thresholds_and_inject_random_directions``: here,
  re-exported from ``delve`` and ``delve.pca.layers``;
* the modules ``delve.torchcallback``, ``delve.torch_utils`` and
  ``delve.tools``: thin re-exports of the current names.

This module depends on nothing in delve but :mod:`delve.common.naming` and
:mod:`delve.common.validation`, so the modules that honour the old spellings can use it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from ..common.naming import layer_name
from ..common.validation import check_fraction

__all__ = [
    "deprecated_alias",
    "split_positional_writer_args",
    "strip_mode_suffix",
    "LegacyPCANames",
    "change_all_pca_layer_thresholds",
    "change_all_pca_layer_thresholds_and_inject_random_directions",
]

logger = logging.getLogger("delve")

T = TypeVar("T", bound=type)

_MODE_SUFFIX = "_eval"


def deprecated_alias(cls: T, old_name: str) -> T:
    """A subclass of ``cls`` named ``old_name`` that warns (``DeprecationWarning``) when built.

    Examples
    --------
    >>> class New:
    ...     pass
    >>> Old = deprecated_alias(New, "Old")
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = Old()
    >>> str(caught[0].message)
    'Old is deprecated; use New (same arguments)'
    """

    def warn_then_init(self: Any, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            f"{old_name} is deprecated; use {cls.__name__} (same arguments)", DeprecationWarning, stacklevel=2
        )
        cls.__init__(self, *args, **kwargs)

    namespace = {
        "__init__": warn_then_init,
        "__doc__": f"Deprecated name of :class:`{cls.__name__}`.",
        "__module__": cls.__module__,
    }
    return type(old_name, (cls,), namespace)  # type: ignore[return-value]


def split_positional_writer_args(layer_filter: Any, writer_args: Any) -> tuple[Any, Any]:
    """``(layer_filter, writer_args)``: 0.1.x took ``writer_args`` as the fourth positional argument.

    A mapping in ``layer_filter``'s place (with no ``writer_args``) is the
    writers' arguments of a 0.1.x call.

    Examples
    --------
    >>> split_positional_writer_args({"fontsize": 16}, None)
    (None, {'fontsize': 16})
    >>> split_positional_writer_args("features.*", None)
    ('features.*', None)
    """
    if isinstance(layer_filter, Mapping) and writer_args is None:
        return None, layer_filter
    return layer_filter, writer_args


def strip_mode_suffix(key: str) -> str:
    """A statistic key without 0.1.x's ``_eval`` suffix (both modes are always recorded now).

    Examples
    --------
    >>> strip_mode_suffix("lsat_eval"), strip_mode_suffix("idim")
    ('lsat', 'idim')
    """
    return key[: -len(_MODE_SUFFIX)] if key.endswith(_MODE_SUFFIX) else key


class LegacyPCANames:
    """The 0.1.x attribute names of a PCA layer.

    ``in_dim`` is the number of kept directions ``k``, ``fs_dim`` the feature
    size ``d``, ``sat`` the saturation in percent; ``gradient_epoch_start`` was
    stored but never used by 0.1.x and has no effect. A class using this
    mixin provides ``n_components`` and ``in_features``.
    """

    gradient_epoch_start: int = 20

    @property
    def in_dim(self) -> int:
        return self.n_components  # type: ignore[attr-defined]

    @property
    def fs_dim(self) -> int:
        return self.in_features  # type: ignore[attr-defined]

    @property
    def sat(self) -> float:
        return 100.0 * self.n_components / self.in_features  # type: ignore[attr-defined]


def _pca_layers(network: nn.Module) -> list[tuple[str, Any]]:
    return [(layer_name(name) or "pca", m) for name, m in network.named_modules() if isinstance(m, LegacyPCANames)]


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
    >>> from delve.pca.layers import LinearPCALayer
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
    >>> from delve.pca.layers import LinearPCALayer
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
