"""Verdicts: what a model's structure says before any training, such as the receptive field of each layer.

:mod:`.receptive_field` holds :func:`receptive_field` and states the formulas;
:mod:`.walk` traces a model and runs its graph on the meta device;
:mod:`.operations`, :mod:`.calls`, :mod:`.tensor_functions` and :mod:`.layers`
say what each node does to the fields; :mod:`.spatial` how shape operations
move a tensor's spatial axes, and :mod:`.fields` how a layer maps the fields
along one axis.
"""

from .receptive_field import receptive_field

__all__ = ["receptive_field"]
