"""Callbacks that attach delve to training frameworks.

Each integration lives in its own module and needs its framework, installed
with the matching extra:

==========================================  ====================================
module                                      install
==========================================  ====================================
:mod:`delve.integrations.lightning`         ``pip install 'delve[lightning]'``
:mod:`delve.integrations.huggingface`       ``pip install 'delve[huggingface]'``
==========================================  ====================================

Importing this package imports no framework; importing one of the modules
without its framework raises an :class:`ImportError` that names the extra.
"""
