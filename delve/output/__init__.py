"""What a run looks like on disk and on screen: file names, formats, tables, figures, reading it back.

:mod:`.layout` names every file of a run, :mod:`.formats` writes and reads each
format, :mod:`.tables` and :mod:`.summary` turn values into tables and text,
:mod:`.figures` and :mod:`.plotting` draw them, :mod:`.results` reads a run
back (and recomputes statistics from saved covariances). The writers that use
them during training are :mod:`delve.writers`.
"""
