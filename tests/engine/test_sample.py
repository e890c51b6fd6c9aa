"""The bounded reservoir sample behind the ``embed`` statistic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delve.engine.sample import ReservoirSample


def offered(n: int, d: int = 3) -> torch.Tensor:
    """Rows whose first column is their index, so kept rows can be identified."""
    rows = torch.randn(n, d, dtype=torch.float64)
    rows[:, 0] = torch.arange(n, dtype=torch.float64)
    return rows


def test_keeps_everything_below_the_bound():
    rows = offered(12)
    sample = ReservoirSample(size=20)
    for batch in rows.split(5):
        sample.add(batch)
    kept = sample.rows
    assert kept.shape == (12, 3)
    order = torch.argsort(kept[:, 0])
    torch.testing.assert_close(kept[order], rows, rtol=0, atol=0)


def test_bounded_and_a_subset_without_repeats():
    rows = offered(100)
    sample = ReservoirSample(size=15)
    for batch in rows.split(7):
        sample.add(batch.float())  # stored as float64 whatever comes in
    kept = sample.rows
    assert kept.shape == (15, 3) and kept.dtype == torch.float64
    index = kept[:, 0].long()
    assert len(set(index.tolist())) == 15
    torch.testing.assert_close(kept, rows[index].float().double())


def test_every_row_is_equally_likely_across_batches():
    """Inclusion frequency of every row is size / n, whatever batch it arrived in."""
    n, size, trials = 24, 6, 1500
    counts = np.zeros(n)
    rows = offered(n, d=1)
    batches = [rows[:2], rows[2:14], rows[14:15], rows[15:]]  # uneven batches
    for seed in range(trials):
        sample = ReservoirSample(size=size, seed=seed)
        for batch in batches:
            sample.add(batch)
        counts[sample.rows[:, 0].long().numpy()] += 1
    frequency = counts / trials
    sigma = np.sqrt(0.25 * 0.75 / trials)
    assert np.all(np.abs(frequency - size / n) < 5 * sigma)


def test_reset_and_empty_batches():
    sample = ReservoirSample(size=4)
    assert sample.rows is None
    sample.add(torch.zeros(0, 2))
    assert sample.rows is None
    sample.add(torch.ones(3, 2))
    sample.reset()
    assert sample.rows is None
    sample.add(torch.full((2, 2), 7.0))
    torch.testing.assert_close(sample.rows, torch.full((2, 2), 7.0, dtype=torch.float64))


def test_private_generator_leaves_the_global_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    sample = ReservoirSample(size=3)
    sample.add(torch.randn(50, 2, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(torch.rand(5), expected)


def test_same_seed_same_sample():
    rows = offered(40)
    first, second = ReservoirSample(size=5, seed=3), ReservoirSample(size=5, seed=3)
    for batch in rows.split(9):
        first.add(batch)
        second.add(batch)
    assert torch.equal(first.rows, second.rows)


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        ReservoirSample(size=0)
