"""The files delve writes, each format's writing and reading side by side.

=====================  ==========================================================
module                 file
=====================  ==========================================================
:mod:`.csv`            ``<savefile>.csv``: one row per epoch, one column per value
:mod:`.npy`            ``<savefile>/npy/``: one ``.npy`` per value and epoch, plus
                       ``counters.json``
:mod:`.record`         ``<savefile>.run.json``: the run's layers and statistics
=====================  ==========================================================

Writers and the readers of :mod:`delve.output.results` both use these modules, so a
format is defined once. Where the files go is :mod:`delve.output.layout`'s job.
"""
