import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import fitloop as fl
from fitloop.data import TensorBatches


def test_split_disjoint_covering_and_seeded():
    X, y = torch.randn(101, 2), torch.randn(101)
    a = fl.split(X, y, seed=3)
    b = fl.split(X, y, seed=3)
    c = fl.split(X, y, seed=4)
    idx = [p.indices for p in a]
    assert [len(i) for i in idx] == [71, 15, 15]
    allidx = torch.cat(idx)
    assert sorted(allidx.tolist()) == list(range(101))  # disjoint and complete
    for p, q in zip(a, b):
        assert torch.equal(p.indices, q.indices) and torch.equal(p.X, q.X)
    assert not torch.equal(a[0].indices, c[0].indices)
    # each part holds exactly the rows its indices name
    for p in a:
        assert torch.equal(p.X, X[p.indices]) and torch.equal(p.y, y[p.indices])


def test_split_numpy_and_two_way_and_zero_fraction():
    X, y = np.random.rand(50, 3), np.arange(50)
    train, test = fl.split(X, y, fractions=(0.8, 0.2))
    assert len(train) == 40 and len(test) == 10
    assert train.X.dtype == torch.float32  # float64 arrays become float32 once
    train, val, test = fl.split(X, y, fractions=(0.8, 0.0, 0.2))
    assert val is None and len(train) + len(test) == 50


def test_stratified_split_keeps_proportions():
    y = torch.tensor([0] * 80 + [1] * 20)
    X = torch.arange(100.0)[:, None]
    train, val, test = fl.split(X, y, seed=0, stratify=True)
    for part, n in ((train, 70), (val, 15), (test, 15)):
        assert len(part) == n
        frac = part.y.float().mean().item()
        assert abs(frac - 0.2) < 0.021
    assert sorted(torch.cat([train.indices, val.indices, test.indices]).tolist()) == list(range(100))


def test_split_dataset_gives_subsets_with_indices():
    ds = TensorDataset(torch.randn(20, 2), torch.randn(20))
    train, val, test = fl.split(ds, seed=0)
    assert len(train) + len(val) + len(test) == 20
    assert set(train.indices).isdisjoint(test.indices)


@pytest.mark.parametrize("fractions", [(0.5, 0.2, 0.2), (0.7, 0.3, 0.3)])
def test_fractions_must_sum_to_one(fractions):
    with pytest.raises(ValueError, match=r"fractions must sum to 1, got .*sum"):
        fl.split(torch.randn(10, 1), torch.randn(10), fractions=fractions)


def test_fraction_count_and_sign_are_checked():
    X, y = torch.randn(10, 1), torch.randn(10)
    with pytest.raises(ValueError, match=r"fractions: got \(1\.0,\); pass 2 or 3 fractions \(train, val\[, test\]\)"):
        fl.split(X, y, fractions=(1.0,))
    with pytest.raises(ValueError, match="each fraction must be >= 0 and the train fraction > 0"):
        fl.split(X, y, fractions=(0.0, 1.0))
    with pytest.raises(ValueError, match="each fraction must be >= 0"):
        fl.split(X, y, fractions=(1.1, -0.1))
    with pytest.raises(ValueError, match=r"fractions: got \(nan, 0\.5, 0\.5\); each fraction must be a finite number"):
        fl.split(X, y, fractions=(float("nan"), 0.5, 0.5))


def test_lengths_must_match():
    with pytest.raises(ValueError, match=r"X and y have different lengths: len\(X\)=10, len\(y\)=9"):
        fl.split(torch.randn(10, 1), torch.randn(9))


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="empty"):
        fl.split(torch.randn(0, 1), torch.randn(0))


def test_tensor_batches_cover_epoch_and_replay_from_generator_state():
    X = torch.arange(10.0)[:, None]
    tb = TensorBatches(X, X.squeeze(1), batch_size=3, shuffle=True)
    assert len(tb) == 4
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    full = [xb.squeeze(1).tolist() for xb, _ in tb.epoch(g)]
    assert sorted(sum(full, [])) == list(range(10))
    g.set_state(state)  # resume at batch 2 from the epoch's generator state
    rest = [xb.squeeze(1).tolist() for xb, _ in tb.epoch(g, start=2)]
    assert rest == full[2:]


def test_full_batch_when_batch_size_none():
    X = torch.randn(7, 2)
    tb = TensorBatches(X, None, batch_size=None, shuffle=True)
    batches = list(tb.epoch(torch.Generator()))
    assert len(batches) == 1 and torch.equal(batches[0][0], X)
