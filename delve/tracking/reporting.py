"""A tracker's verdicts: the input's shape from the first forward pass, the layers' facts, the report.

:class:`InputShape` is a forward pre-hook on the model that notes the shape
of its first input and removes itself. :class:`LayerFactsSource` derives
from it, once, the receptive fields of the tracked convolutions
(:func:`delve.receptive_field`) and every layer's facts for the run record
(:mod:`delve.verdicts.facts`). :func:`receptive_fields` and :func:`report`
are the tracker's methods of the same names: defined here, bound in
:class:`~delve.SaturationTracker`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..capture.discovery import TrackedLayer
from ..common.torch_features import is_compiling
from ..verdicts.facts import layer_facts, report_of
from ..verdicts.findings import Thresholds
from ..verdicts.receptive_field import COLUMNS, receptive_field

__all__ = ["InputShape", "LayerFactsSource", "receptive_fields", "report"]

logger = logging.getLogger("delve")


class InputShape:
    """The shape of the first tensor a model is called with, noted by a forward pre-hook that then removes itself.

    Only when the tracker was given one model (``modules=model``): a list or
    dict of modules has no single input. The hook never changes the input,
    and a copy of the model (pickle, ``copy.deepcopy``) gets an inert one.

    Examples
    --------
    >>> model = nn.Linear(4, 2)
    >>> shape = InputShape(model)
    >>> _ = model(torch.zeros(3, 4))
    >>> shape.shape, len(model._forward_pre_hooks)
    ((3, 4), 0)
    """

    def __init__(self, modules: object) -> None:
        self.shape: tuple[int, ...] | None = None
        self.seen = False
        hook = _FirstInput(self)
        self.handle = modules.register_forward_pre_hook(hook) if isinstance(modules, nn.Module) else None

    def note(self, args: tuple) -> None:
        """Note the shape of the first positional argument (when a tensor), and remove the hook."""
        if is_compiling():
            return  # noted when the model runs outside the compiler, not while Dynamo traces it
        first = args[0] if args else None
        if isinstance(first, torch.Tensor):
            self.shape = tuple(int(size) for size in first.shape)
        self.seen = True
        self.remove()

    def remove(self) -> None:
        """Remove the hook (safe to call twice)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class _FirstInput:
    """The pre-hook itself: a weak reference, so the model does not keep the tracker alive."""

    __slots__ = ("owner",)

    def __init__(self, owner: InputShape) -> None:
        self.owner = weakref.ref(owner)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        owner = self.owner()
        if owner is not None:
            owner.note(args)

    def __reduce__(self) -> tuple:
        return (_inert_hook, ())


def _inert_hook() -> Any:
    return _do_nothing


def _do_nothing(*args: Any) -> None:
    return None


def _unknown(layers: Sequence[TrackedLayer], why: str) -> pd.DataFrame:
    """Rows with missing fields and a note, for every tracked convolution."""
    rows = [(layer.name, None, None, None, pd.NA, why) for layer in layers if layer.kind == "conv"]
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    return frame.astype({"layer": str, "beyond_input": "boolean", "note": str})


class LayerFactsSource:
    """What a tracker knows of its layers apart from their values: receptive fields and facts, derived once.

    Parameters
    ----------
    modules : nn.Module, list or dict
        The tracker's ``modules``.
    layers : list of TrackedLayer
        Its tracked layers.
    input_shape : InputShape
        The hook noting the model's first input.
    conv_method : str
        The tracker's ``conv_method`` (for the rank bounds).
    """

    def __init__(
        self, modules: object, layers: Sequence[TrackedLayer], input_shape: InputShape, conv_method: str
    ) -> None:
        self.model = modules if isinstance(modules, nn.Module) else None
        self.layers = list(layers)
        self.input_shape = input_shape
        self.conv_method = conv_method
        self._fields: pd.DataFrame | None = None
        self._facts: dict[str, dict[str, Any]] | None = None

    def receptive_fields(self) -> pd.DataFrame:
        """The tracked convolutions' receptive fields at the first input's shape (``RuntimeError`` before it)."""
        if self._fields is None:
            self._fields = self._derive()
        return self._fields.copy()

    def _derive(self) -> pd.DataFrame:
        if self.model is None:
            return _unknown(self.layers, "modules= named several modules, not one model: the model's input is unknown")
        shape = self.input_shape.shape
        if shape is None:
            if not self.input_shape.seen:
                raise RuntimeError(
                    "tracker.receptive_fields() takes the input's shape from the model's first forward pass, and "
                    "the model has not run since the tracker was built: call it after the first batch, or call "
                    "delve.receptive_field(model, input_shape) without a tracker"
                )
            return _unknown(self.layers, "the model's first positional argument was not a tensor")
        frame = receptive_field(self.model, shape)
        tracked = {layer.name for layer in self.layers}
        return frame[frame["layer"].isin(tracked)].reset_index(drop=True)

    def facts(self) -> dict[str, dict[str, Any]]:
        """Each layer's facts for the run record: rank bounds at once, receptive fields once the input is known."""
        if self._facts is not None:
            return self._facts
        convolutions = any(layer.kind == "conv" for layer in self.layers)
        if convolutions and not self.input_shape.seen:
            return layer_facts(self.layers, None, self.conv_method)  # fields follow the first forward pass
        fields = None
        if convolutions:
            try:
                fields = self.receptive_fields()
            except Exception as error:  # an analysis must never stop training
                logger.info("delve: no receptive fields for the run record: %s", error)
                fields = _unknown(self.layers, f"not derived: {type(error).__name__}: {error}")
        self._facts = layer_facts(self.layers, fields, self.conv_method)
        return self._facts


def receptive_fields(tracker: Any) -> pd.DataFrame:
    """The receptive field of every tracked convolution, at the input shape of the model's first forward pass.

    The same table as :func:`delve.receptive_field` (columns ``layer``,
    ``rf_min``, ``rf_max``, ``input_size``, ``beyond_input``, ``note``), for
    the layers this tracker tracks; the shape is noted by a forward pre-hook
    on the model, removed after its first call. With ``modules=`` a list or
    dict of modules there is no single input: every row has a note instead.

    Raises
    ------
    RuntimeError
        Before the model's first forward pass.

    Examples
    --------
    >>> from delve import SaturationTracker
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    >>> with SaturationTracker("run", modules=model, nosave=True) as tracker:
    ...     _ = model(torch.randn(2, 1, 4, 4))
    ...     print(tracker.receptive_fields())
      layer  rf_min  rf_max input_size  beyond_input note
    0     0  (3, 3)  (3, 3)     (4, 4)         False
    1     2  (5, 5)  (5, 5)     (4, 4)          True
    """
    return tracker._recording.facts.receptive_fields()


def report(tracker: Any, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """The findings for the run so far: one row per layer, with what its values suggest changing.

    Judged from the values this tracker logged in this process (train
    saturation of the last epoch, ``k``, rows, probe accuracy, their
    stability over epochs) and the layers' facts (rank bounds, receptive
    fields at the first input's shape), by
    :func:`delve.verdicts.findings.find`. ``delve report RUN`` gives the same
    table from the run's files.

    Parameters
    ----------
    thresholds : Thresholds, optional
        The findings' thresholds (:class:`delve.verdicts.findings.Thresholds`).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer``, ``width``, ``saturation``, ``k``, ``bound``,
        ``rows``, ``rf_min``, ``probe_accuracy``, ``findings`` (comma-separated
        keywords of ``tail``, ``idle-width``, ``dead``, ``too-few-rows``, or
        empty), ``action`` (one sentence) and ``evidence``, in forward order.
        :func:`delve.output.report.format_report` prints it.

    Examples
    --------
    >>> from delve import SaturationTracker
    >>> model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64))
    >>> with SaturationTracker("run", modules=model, nosave=True) as tracker:
    ...     for epoch in range(3):
    ...         _ = model(torch.randn(4096, 4))
    ...         _ = tracker.add_saturations()
    ...     tracker.report()[["layer", "width", "bound", "findings"]]
      layer  width  bound findings
    0     0     64      4
    1     2     64     64  idle-width
    """
    return report_of(tracker._run.logged(), tracker.run_record, thresholds, tracker.layer_names)
