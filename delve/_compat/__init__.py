"""What delve keeps for scripts written against delve 0.1.x, out of the way of current code.

* :mod:`.spellings`: the old spellings current code translates where it meets
  them (``CheckLayerSat``, ``writer_args`` as the fourth positional argument,
  ``lsat_eval``-style statistic keys).
* The 0.1.x import paths ``delve.torchcallback``, ``delve.torch_utils``,
  ``delve.tools``, ``delve.metrics`` and ``delve.pca_layers`` are thin modules
  at the top of the package that re-export the current names; they hold no logic.
* The PCA layers' 0.1.x attribute names (``in_dim``, ``fs_dim``, ``sat``) are
  documented properties of :class:`~delve.pca.linear.LinearPCALayer`.
"""
