"""The budget: what tracking each layer costs against training it, and which rows each layer keeps.

:mod:`.layer_cost` estimates one layer's tracking and training work from its
shapes, :mod:`.device_costs` what each elementary operation costs on its
device, :mod:`.cost_model` holds every layer's cost and spends a
``max_overhead`` budget over them, :mod:`.row_sampler` draws the rows kept.
"""
