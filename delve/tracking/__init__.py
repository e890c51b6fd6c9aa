"""The tracker: its parameters, the run it records, its checkpoints and what it tells its user.

:mod:`.tracker` is :class:`~delve.SaturationTracker` (attach, record,
compute, write, checkpoint, close); :mod:`.parameters` declares its arguments
once (with :mod:`.options`); :mod:`.checkpoint` is the layout of its
``state_dict``; :mod:`.notices` are the warnings it gives once.
"""
