"""Capture: which layers of a model are tracked, their forward hooks, and their outputs as rows.

:mod:`.observation` holds the observer registry (how an output becomes rows),
:mod:`.layer_kinds` the built-in observers (add a layer kind there, or register
one), :mod:`.discovery` finds a model's layers and names them, :mod:`.hooks`
attaches the forward hooks and :mod:`.rows` picks rows out of an observation.
"""

from . import layer_kinds  # noqa: F401  (registers the built-in observers)
