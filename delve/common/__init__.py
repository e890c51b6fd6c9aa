"""What every stage of delve uses and nothing in it depends on.

:mod:`.validation` (argument checks that name the accepted values),
:mod:`.naming` (layer and value names, the run record), :mod:`.files` (atomic
writes), :mod:`.ranks` (``torch.distributed`` facts that also hold in one
process) and :mod:`.torch_features` (PyTorch features whose spelling changed
across the supported versions).
"""
