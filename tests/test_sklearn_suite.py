"""scikit-learn's own BayesianGaussianMixture tests, run against ours.

The test module ships with scikit-learn; its functions are collected here and
run with its ``BayesianGaussianMixture`` replaced by ours. Left out: the two
tests of its private helpers (``_log_dirichlet_norm``, ``_log_wishart_norm``),
and ``test_compare_covar_type``, which drives the estimator through its private
``_check_parameters``/``_initialize``/``_m_step`` on in-memory arrays.
"""

import pytest

import dask_gmm

upstream = pytest.importorskip("sklearn.mixture.tests.test_bayesian_mixture")

PRIVATE_HELPER_TESTS = {"test_log_dirichlet_norm", "test_log_wishart_norm",
                        "test_compare_covar_type"}


@pytest.fixture(autouse=True)
def ours_instead_of_sklearn(monkeypatch):
    monkeypatch.setattr(upstream, "BayesianGaussianMixture",
                        dask_gmm.BayesianGaussianMixture)


for _name in dir(upstream):
    if _name.startswith("test_") and _name not in PRIVATE_HELPER_TESTS:
        globals()[_name] = getattr(upstream, _name)
