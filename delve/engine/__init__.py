"""The engine: per layer and mode, accumulators fed from the forward hooks, merged exactly.

* The protocol: :mod:`.accumulator` (an accumulator declares its state, the
  rest is generic), :mod:`.states` (the kinds of state: sums, co-moments,
  bounded samples, and how each merges within a process and across ranks),
  :mod:`.layer_state` (a layer and mode's accumulators: the one carrier from
  the hook to the statistics), :mod:`.sync` (the merge across ranks).
* The hot path: :mod:`.recorder` (observation, device, budget, accumulators).
* The accumulators: :mod:`.covariance` (every layer's; with :mod:`.moments`
  for the running moments and their merge, :mod:`.products` for the product
  of each batch and :mod:`.precision` for the precision by device),
  :mod:`.sample` (the ``embed`` sample), :mod:`.activity` (units' activity,
  for ``dorm``). A new accumulator is a module here, or a user's subclass of
  :class:`~delve.engine.accumulator.Accumulator`.
"""
