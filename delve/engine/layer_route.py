"""Which exact route a layer's covariance takes, decided at its first recorded pass and checked once.

At a layer's first recorded forward pass its costs go to the cost model
(:mod:`delve.budget`), which picks the cheaper exact route: the output rows'
Gram product, or the input scatter mapped through the weights
(:mod:`delve.engine.input_route`) for layers :mod:`delve.capture.affine`
reads as affine. Before the input route is trusted, a few rows of that first
pass are recomputed from the input and the weights and compared with the
output the layer produced (one read from the device, once per layer): a
wrapper, a subclass's own forward or an earlier hook that replaced the output
keeps the layer on the output route, and a warning says why, once.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..budget.cost_model import CostModel
from ..budget.device_costs import relative_cost, training_rate
from ..budget.layer_cost import INPUT, layer_cost
from ..capture.affine import AffineView, NotAffine, affine_view
from ..capture.observation import ObservationConfig
from .input_route import ScatterCache
from .precision import resolve_precision
from .products import to_device
from .targets import TargetSlot

__all__ = ["LayerRoute", "check_affine", "input_source"]

#: Rows of the first pass recomputed from the input to check the input route.
CHECKED_ROWS = 8


class LayerRoute:
    """One layer's route: noted with its costs at its first recorded pass, then kept.

    Parameters
    ----------
    name : str
        The layer's name.
    costs : CostModel
        The tracker's cost model (it chooses the route).
    observation : ObservationConfig
        How the layer's outputs become rows.
    precision : str
        The precision the layer's products are asked for.
    cache : ScatterCache, optional
        The tracker's cache of input scatters (layers reading one input share one).
    targets : TargetSlot, optional
        With live probes, where the targets are: the probe's work is costed too.
    """

    def __init__(
        self,
        name: str,
        costs: CostModel,
        observation: ObservationConfig,
        precision: str,
        cache: ScatterCache | None = None,
        targets: TargetSlot | None = None,
    ) -> None:
        self.name = name
        self.costs = costs
        self.observation = observation
        self.precision = precision
        self.cache = cache
        self.targets = targets
        self._warned = False

    def view(
        self, module: nn.Module, inputs: tuple, output: Any, rows: torch.Tensor, home: torch.device
    ) -> AffineView | None:
        """This pass's input rows and weights on ``home`` when the layer takes the input route, else ``None``.

        ``rows`` is the output's observation, on ``home``. At the layer's
        first recorded pass its costs are noted (which decides its route)
        and the input route is checked.
        """
        costs = self.costs
        first = self.name not in costs
        if not first and costs.route(self.name) != INPUT:
            return None
        view = affine_view(module, inputs, self.observation)
        usable = isinstance(view, AffineView) and view.rows.shape[:-1] == rows.shape[:-1]
        if first:
            # An affine layer that unexpectedly cannot take the route is costed as if it could: if the
            # route would have paid, the user hears why it is not taken.
            surprising = isinstance(view, NotAffine) and not view.expected
            features_in = view.features_in if usable else _features_in(module) if surprising else None  # type: ignore[union-attr]
            self._note(module, output, rows, features_in, view if usable else None)  # type: ignore[arg-type]
            if costs.route(self.name) == INPUT:
                reason = view.reason if isinstance(view, NotAffine) else check_affine(view, rows)  # type: ignore[arg-type]
                if reason is not None:
                    self._keep_off(reason)
                    return None
        if costs.route(self.name) != INPUT:
            return None
        if not usable:
            reason = view.reason if isinstance(view, NotAffine) else "its input rows do not match its output rows"
            self._keep_off(reason)
            return None
        assert isinstance(view, AffineView)
        if view.rows.device != home:
            view = AffineView(to_device(view.rows, home), view.weight, view.bias)
        return view

    def _note(
        self, module: nn.Module, output: Any, rows: torch.Tensor, features_in: int | None, view: AffineView | None
    ) -> None:
        n = rows.numel() // rows.shape[-1]
        exact = resolve_precision(self.precision, rows.device) == "float64"
        product = torch.float64 if exact else torch.float32
        weights = relative_cost(rows.device.type, product, rows.dtype)
        float64_weight = relative_cost(rows.device.type, torch.float64, rows.dtype).product
        shared = view is not None and self.cache is not None and self.cache.holds(input_source(view), view.rows)
        current = self.targets.current if self.targets is not None else None
        self.costs.note(
            layer_cost(
                self.name,
                module,
                output,
                n,
                rows.shape[-1],
                weights,
                strided=not rows.is_contiguous(),
                features_in=features_in,
                float64_weight=float64_weight,
                input_shared=shared,
                rate=training_rate(rows.device.type, rows.dtype),
                probe_samples=self._probe_samples(output),
                probe_width=rows.shape[-1] + (current.width if current is not None else 0),
                device=rows.device.type,
            )
        )

    def _probe_samples(self, output: Any) -> int:
        """Samples per batch the probe merges: the targets' count, else the output's first axis; 0 without probes."""
        if self.targets is None:
            return 0
        if self.targets.current is not None:
            return self.targets.current.samples
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) and tensor.ndim else 0

    def _keep_off(self, reason: str) -> None:
        self.costs.keep_off_input_route(self.name, reason)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"delve: layer {self.name!r} stays on the output route ({reason}); its statistics are exact, "
                "tracking it costs its output width",
                UserWarning,
                stacklevel=6,
            )


def _features_in(module: nn.Module) -> int | None:
    """``d_in`` of an affine layer from its declared sizes, for one whose weights cannot be read."""
    size = getattr(module, "in_features", None) or getattr(module, "in_channels", None)
    return int(size) if isinstance(size, int) else None


def input_source(view: AffineView) -> torch.Tensor:
    """The tensor whose memory ``view.rows`` reads: what layers sharing an input share (the scatter cache's key)."""
    base = view.rows
    while base._base is not None:
        base = base._base
    return base


def check_affine(view: AffineView, rows: torch.Tensor) -> str | None:
    """Why the output ``rows`` are not the affine map of ``view``'s first rows, or ``None`` when they are.

    Rounding is allowed for: the bound is a few units in the last place of the
    coarsest precision involved (half precision under autocast, TensorFloat-32
    where CUDA uses it), times the sum of the products' magnitudes.

    Examples
    --------
    >>> layer = nn.Linear(3, 2)
    >>> x = torch.randn(5, 3)
    >>> check_affine(AffineView(x, layer.weight, layer.bias), layer(x).detach()) is None
    True
    >>> check_affine(AffineView(x, layer.weight, layer.bias), 2 * layer(x).detach())
    'its output is not the affine map of its input (a subclass, a wrapper or a hook changed it)'
    """
    d_in, d_out = view.features_in, view.features_out
    count = min(CHECKED_ROWS, rows.numel() // d_out)
    device = rows.device
    x = view.rows.reshape(-1, d_in)[:count].to(device, torch.float64)
    weight = view.weight.detach().to(device, torch.float64)
    expected = x @ weight.T
    scale = x.abs() @ weight.abs().T
    if view.bias is not None:
        bias = view.bias.detach().to(device, torch.float64)
        expected, scale = expected + bias, scale + bias.abs()
    observed = rows.reshape(-1, d_out)[:count].to(torch.float64)
    eps = max(torch.finfo(t.dtype).eps for t in (rows, view.rows, view.weight))
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        eps = max(eps, 2.0**-10)
    if bool(((observed - expected).abs() <= 8 * eps * scale + torch.finfo(torch.float64).tiny).all()):
        return None
    return "its output is not the affine map of its input (a subclass, a wrapper or a hook changed it)"
