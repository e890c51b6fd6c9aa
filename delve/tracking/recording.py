"""What a tracker attaches to a model: its layers, their recorders and hooks, and what feeds them.

:class:`ModelRecording` is the tracker's recording side, apart from its run
(epochs, writers, files): the tracked layers (:mod:`delve.capture.discovery`),
one recorder per layer (:mod:`delve.engine.recorder`) behind one forward hook
each, the order of their first forward passes, the shape of the model's
first input (:class:`~delve.tracking.reporting.InputShape`) and the facts
derived from it, the targets of live probes, the cost estimates, and the layers' state in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from ..capture.discovery import TrackedLayer, discover_layers
from ..capture.hooks import ForwardOrder, HookOwner, attach_hooks, module_device, reset_compiler_for
from ..engine.layer_state import LayerState
from ..engine.recorder import LayerRecorders
from ..statistics.epoch import merge_over_ranks
from .checkpoint import check_state, pack_streams, restore_streams
from .parameters import TrackerConfig
from .reporting import InputShape, LayerFactsSource
from .settings import recording_settings

__all__ = ["ModelRecording"]


class ModelRecording:
    """The tracked layers of a model, recorded by forward hooks until :meth:`detach`.

    Parameters
    ----------
    owner : HookOwner
        Asked at every forward pass whether to record (the tracker).
    config : TrackerConfig
        The tracker's validated arguments.
    """

    def __init__(self, owner: HookOwner, config: TrackerConfig) -> None:
        self.config = config
        self.layers: list[TrackedLayer] = discover_layers(
            config.modules, config.layer_filter, config.ignore_layer_names, config.include_conv
        )
        self.settings = recording_settings(config)
        self.recorders = LayerRecorders({layer.name: layer.observer for layer in self.layers}, self.settings)
        self.modules = {layer.name: layer.module for layer in self.layers}
        self.order = ForwardOrder()
        self.epochs: dict[str, tuple[int, int]] = {}  # layer -> (training batches, modes) of the last epoch
        self.handles = attach_hooks(owner, self.modules, self.recorders, self.order)
        self.input_shape = InputShape(config.modules)
        self.facts = LayerFactsSource(config.modules, self.layers, self.input_shape, config.observation.conv_method)
        reset_compiler_for(config.modules)

    @property
    def layer_names(self) -> list[str]:
        """Tracked layer names, in order of their first forward pass, then the rest."""
        seen = self.order.names()
        return seen + [name for name in self.recorders if name not in self.order]

    def devices(self) -> dict[str, torch.device]:
        """Where each layer's state lives: ``device=``, else the layer's own device."""
        return {name: self.config.device or module_device(module) for name, module in self.modules.items()}

    def states(self, taken: Mapping[str, Mapping[str, LayerState]]) -> list[LayerState]:
        """States taken off the recorders, merged over the ranks (unless ``sync_ranks=False``), in forward order."""
        config = self.config
        # What the last epoch held, for the epoch-end column of the cost table.
        self.epochs = {
            layer: (modes["train"].forward_calls if "train" in modes else 0, len(modes))
            for layer, modes in taken.items()
            if modes
        }
        return merge_over_ranks(
            taken, self.layer_names, self.settings.states.new, config.process_group, self.devices(), config.sync_ranks
        )

    @property
    def probes(self) -> bool:
        """Whether live probes are fitted (``"probe"`` in ``stats``)."""
        return self.settings.targets is not None

    def set_targets(self, targets: torch.Tensor | None, num_classes: int | None = None) -> None:
        """The targets of the forward passes that follow (see :meth:`delve.SaturationTracker.set_targets`)."""
        slot = self.settings.targets
        if slot is None:
            raise ValueError("set_targets() feeds live probes: add 'probe' to stats= to use it")
        slot.set(targets, num_classes)

    def cost(self) -> pd.DataFrame:
        """The cost table of the layers seen so far (``RuntimeError`` before any forward pass)."""
        table = self.settings.costs.frame(self.layer_names, self.epochs)
        if table.empty:
            raise RuntimeError(
                "tracker.cost() estimates each layer's cost from the shapes of its first recorded forward pass, "
                "and no tracked layer has recorded one yet: call it after the model's first batch"
            )
        return table

    def detach(self) -> None:
        """Remove every hook (safe to call twice)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.input_shape.remove()

    def state_dict(self) -> dict[str, Any]:
        """The layers' states, the forward order and the random streams (:mod:`delve.tracking.checkpoint`)."""
        state = {"forward_order": self.order.names(), "layers": self.recorders.state_dict()}
        return {**state, **pack_streams(self.config.observation.generator, self.settings.sampler)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the checks of :func:`~delve.tracking.checkpoint.check_state`)."""
        check_state(state, self.recorders)
        self.order.replace([name for name in state["forward_order"] if name in self.recorders])
        self.recorders.load_state_dict(state["layers"], self.devices())
        restore_streams(state, self.config.observation.generator, self.settings.sampler)
