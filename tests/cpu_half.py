"""Skip marks for tests that compute in float16 on the CPU, which PyTorch 2.1 cannot do.

PyTorch 2.1 has no CPU float16 matrix product (``nn.Linear(...).half()``
fails with ``"addmm_impl_cpu_" not implemented for 'Half'``) and its CPU
autocast accepts only bfloat16. delve itself never multiplies in float16 (it
upcasts first), so only the tests' models need these; delve's float16 code
is still tested there through accumulators fed float16 batches directly.
"""

from __future__ import annotations

import pytest
import torch


def _cpu_half_matmul() -> bool:
    try:
        torch.ones(1, 1, dtype=torch.float16) @ torch.ones(1, 1, dtype=torch.float16)
    except RuntimeError:
        return False
    return True


def _cpu_half_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            pass
    except RuntimeError:
        return False
    return True


needs_cpu_half_matmul = pytest.mark.skipif(
    not _cpu_half_matmul(), reason="this PyTorch has no CPU float16 matrix product (PyTorch 2.1)"
)
needs_cpu_half_autocast = pytest.mark.skipif(
    not _cpu_half_autocast(), reason="this PyTorch's CPU autocast takes only bfloat16 (PyTorch 2.1)"
)
