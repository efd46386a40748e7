import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads():
    """The Trainer may lower torch's thread count for small models; keep tests independent."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def regression_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g)
    y = X @ torch.tensor([1.5, -2.0, 0.5]) + 0.3 + 0.01 * torch.randn(200, generator=g)
    return X, y
