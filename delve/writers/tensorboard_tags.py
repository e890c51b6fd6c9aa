"""TensorBoard tags and the custom-scalars layout, in the order of the statistic registry.

TensorBoard's Scalars, Images and Time Series dashboards group tags by their
first component (the *section*) and sort sections by name, digits before
letters; Time Series opens only the first two sections. Alphabetical order
would put ``covariance-...`` and ``intrinsic-dimensionality`` above
``saturation``, so every registered statistic's section starts with its
position in the registry (:data:`delve.statistics.registry.STATISTICS`, saturation
first), zero-padded so that file listings sort the same way:

* ``01-saturation/average/<mode>``: the mean over layers (scalar);
* ``01-saturation/heatmap/<mode>``: layers by epochs, on the statistic's
  fixed colour scale (image);
* ``01-saturation/profile/<mode>``: one bar per layer, this epoch (image);
* ``01-saturation-by-layer/<mode>/<layer>``: one layer (scalar).

So a statistic's overview (three kinds of cards per mode, whatever the number
of layers) is one section, followed by its per-layer section. The report
comes before them all, ``00-report/findings`` (text) and
``00-report/figure`` (the verdict figure): :func:`report_tag`. Values that are
no registered statistic (``rows``, ``nonfinite-batches``) keep their plain
name as section and sort after the statistics; user scalars keep their names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

from ..common.naming import MODES, RunRecord, classify
from ..statistics.registry import STATISTICS, by_name

__all__ = [
    "LAYERS_PER_CHART",
    "section",
    "tensorboard_tag",
    "overview_tag",
    "layer_tag",
    "report_tag",
    "layer_groups",
    "custom_scalars_layout",
]

#: The most layers one custom-scalars chart holds: with two runs, 16 lines are
#: still told apart by their tooltips; 50 lines (no legend) are not.
LAYERS_PER_CHART = 8

_BY_LAYER = "-by-layer"


def section(stat: str, label: str | None = None) -> str:
    """The TensorBoard section of a statistic: its registry position, then ``label`` (default: its name).

    Examples
    --------
    >>> section("saturation"), section("intrinsic-dimensionality"), section("rows")
    ('01-saturation', '02-intrinsic-dimensionality', 'rows')
    >>> section("covariance-matrix", "covariance-eigenvalues")
    '03-covariance-eigenvalues'
    """
    label = stat if label is None else label
    statistic = by_name(stat)
    if statistic is None:
        return label
    keys = list(STATISTICS)
    width = max(2, len(str(len(keys))))
    return f"{keys.index(statistic.key) + 1:0{width}d}-{label}"


def overview_tag(stat: str, kind: str, mode: str) -> str:
    """Tag of a statistic's card over all layers: ``kind`` is ``average``, ``heatmap`` or ``profile``.

    Examples
    --------
    >>> overview_tag("saturation", "heatmap", "train")
    '01-saturation/heatmap/train'
    """
    return f"{section(stat)}/{kind}/{mode}"


def report_tag(kind: str) -> str:
    """Tag of the report's cards: ``kind`` is ``findings`` (text) or ``figure`` (image); the first section.

    Examples
    --------
    >>> report_tag("findings")
    '00-report/findings'
    """
    return f"00-report/{kind}"


def layer_tag(stat: str, mode: str, layer: str, label: str | None = None) -> str:
    """Tag of one layer's value (``label`` names the section, as in :func:`section`).

    Examples
    --------
    >>> layer_tag("saturation", "eval", "features-0")
    '01-saturation-by-layer/eval/features-0'
    """
    return f"{section(stat, label)}{_BY_LAYER}/{mode}/{layer}"


def tensorboard_tag(name: str, record: RunRecord | None = None) -> str:
    """The TensorBoard tag of a logged value.

    A layer's value goes to ``<NN>-<stat>-by-layer/<mode>/<layer>``, a layer
    average to ``<NN>-<stat>/average/<mode>``, where ``NN`` is the
    statistic's position in the registry (see the module's description);
    other names (user scalars) are kept as they are. With the tracker's
    ``record``, only the values it describes are split (see
    :func:`delve.common.naming.classify`).

    Examples
    --------
    >>> tensorboard_tag("train-saturation_features-0")
    '01-saturation-by-layer/train/features-0'
    >>> tensorboard_tag("eval-average-saturation")
    '01-saturation/average/eval'
    >>> tensorboard_tag("test_accuracy")
    'test_accuracy'
    """
    mode, layer, stat = classify(name, record)
    if mode is None:
        return name
    if layer is None:
        base = stat[len("average-") :] if stat.startswith("average-") else stat
        return overview_tag(base, "average", mode)
    return layer_tag(stat, mode, layer)


def layer_groups(layers: Sequence[str], size: int = LAYERS_PER_CHART) -> list[list[str]]:
    """Consecutive groups of at most ``size`` layers, as even as possible, in the given (network) order.

    Examples
    --------
    >>> [len(group) for group in layer_groups([str(i) for i in range(50)])]
    [8, 7, 7, 7, 7, 7, 7]
    """
    count = -(-len(layers) // size) if layers else 0
    bounds = [-(-i * len(layers) // count) for i in range(count + 1)] if count else [0]
    return [list(layers[a:b]) for a, b in pairwise(bounds)]


def _exact(tags: Iterable[str]) -> str:
    # The custom-scalars plugin matches charts' tags as Python regular expressions.
    return "^(?:" + "|".join(re.escape(tag) for tag in tags) + ")$"


def custom_scalars_layout(layers: Mapping[tuple[str, str], Sequence[str]], averages: Iterable[tuple[str, str]]) -> Any:
    """The custom-scalars ``Layout`` proto: one category per statistic, in registry order.

    Each category holds, per mode, a chart of the layer average (where there
    is one) and then charts of at most :data:`LAYERS_PER_CHART` consecutive
    layers in network order. Only the first category starts open.

    Parameters
    ----------
    layers : mapping
        ``(stat, mode)`` -> that statistic's layers in network order.
    averages : iterable
        ``(stat, mode)`` pairs whose layer average is logged.

    Examples
    --------
    >>> layout = custom_scalars_layout({("saturation", "train"): ["conv1", "fc"]}, [("saturation", "train")])
    >>> [chart.title for chart in layout.category[0].chart]
    ['saturation (train): average over layers', 'saturation (train): conv1 ... fc (layers 1-2 of 2)']
    """
    from tensorboardX.proto import layout_pb2

    averaged = set(averages)
    stats = {stat for stat, _ in layers} | {stat for stat, _ in averaged}
    keys = list(STATISTICS)

    def order(stat: str) -> tuple[int, str]:
        statistic = by_name(stat)
        return (keys.index(statistic.key) if statistic is not None else len(keys), stat)

    layout = layout_pb2.Layout()
    for index, stat in enumerate(sorted(stats, key=order)):
        category = layout.category.add(title=stat, closed=index > 0)
        for mode in MODES:
            if (stat, mode) in averaged:
                chart = category.chart.add(title=f"{stat} ({mode}): average over layers")
                chart.multiline.tag.append(_exact([overview_tag(stat, "average", mode)]))
            names = list(layers.get((stat, mode), ()))
            start = 0
            for group in layer_groups(names):
                span = f"{group[0]} ... {group[-1]}" if len(group) > 1 else group[0]
                title = f"{stat} ({mode}): {span} (layers {start + 1}-{start + len(group)} of {len(names)})"
                chart = category.chart.add(title=title)
                chart.multiline.tag.append(_exact(layer_tag(stat, mode, layer) for layer in group))
                start += len(group)
    return layout
