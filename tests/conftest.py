"""Fixtures shared by the test modules."""

import dask
import pytest


@pytest.fixture
def streaming():
    """Fits read storage on every pass (``dask_gmm.persist`` off), as out-of-core fits do."""
    with dask.config.set({"dask_gmm.persist": "never"}):
        yield
