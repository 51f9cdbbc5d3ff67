"""The compiled E-step and prediction kernels against the numpy kernels they replace."""

import subprocess
import sys

import numba
import numpy as np
import pytest

from dask_gmm import _fused, _fused_linear, _wide
from dask_gmm._estep import RowBlock, chunk_shift, responsibilities, weighted_log_prob
from dask_gmm._mstep import Params, precision_cholesky
from dask_gmm._predict import log_resp_and_norm
from dask_gmm._requests import EStep, chunk_pass
from dask_gmm._stats import accumulate, empty_stats

from .helpers import ill_conditioned_case

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def numpy_e_step(X, params, w=None):
    """The numpy route: weighted log densities, responsibilities, sums."""
    shift = chunk_shift(X)
    stats = empty_stats(len(params.weights), X.shape[1], params.covariance_type, shift)
    block = RowBlock(np.asarray(X, dtype=np.float64), shift, w, 0)
    R, log_norm = responsibilities(weighted_log_prob(block, params, shift))
    accumulate(stats, block, R)
    stats.log_likelihood = float(log_norm.sum() if w is None else log_norm @ w)
    return stats


def assert_sums_equal(ours, reference):
    for name in ("nk", "s1", "s2"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=1e-11, atol=1e-9, err_msg=name)
    assert ours.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-12, abs=1e-9)


def assert_predictions_equal(X, params, dtype):
    """``_fused_linear.predict`` against the numpy kernels; returns the scores."""
    n_rows, n_components = len(X), len(params.weights)
    shift = chunk_shift(X)
    wlp = weighted_log_prob(RowBlock(X, shift, None, 0), params, shift)
    proba_reference, log_norm_reference = responsibilities(wlp.copy())
    labels, proba, scores = (np.empty(n_rows, np.int64),
                             np.empty((n_rows, n_components), dtype), np.empty(n_rows))
    _fused_linear.predict(X, params, shift, labels, proba, scores)
    np.testing.assert_allclose(scores, log_norm_reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(proba, proba_reference,
                               rtol=1e-12 if dtype == np.float64 else 1e-6, atol=1e-14)
    np.testing.assert_array_equal(labels, wlp.argmax(axis=1))
    return scores


def random_params(rng, n_components, n_features, center=0.0, covariance_type="full"):
    means = rng.normal(size=(n_components, n_features)) * 3 + center
    if covariance_type == "full":
        A = rng.normal(size=(n_components, n_features, n_features)) * 0.3
        cov = A @ A.transpose(0, 2, 1) + np.eye(n_features)
    elif covariance_type == "tied":
        A = rng.normal(size=(n_features, n_features)) * 0.3
        cov = A @ A.T + np.eye(n_features)
    elif covariance_type == "diag":
        cov = rng.uniform(0.5, 3.0, (n_components, n_features))
    else:
        cov = rng.uniform(0.5, 3.0, n_components)
    weights = rng.uniform(0.5, 1.5, n_components)
    return Params(weights / weights.sum(), means, precision_cholesky(cov, covariance_type),
                  covariance_type)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_rows", [0, 1, 7, 128, 300, 1000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_e_step_equals_numpy_kernels(covariance_type, n_rows, dtype, weighted):
    rng = np.random.default_rng(n_rows)
    params = random_params(rng, 5, 6, center=50.0, covariance_type=covariance_type)
    X = (rng.normal(size=(n_rows, 6)) * 4 + 50.0).astype(dtype)
    w = rng.uniform(0, 3, n_rows) if weighted else None
    ours = chunk_pass(X, [EStep(params)], sample_weight=w)[0]
    reference = numpy_e_step(X, params, w)
    assert ours.n == pytest.approx(reference.n, rel=1e-14)
    np.testing.assert_allclose(ours.shift, reference.shift)
    assert_sums_equal(ours, reference)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_compiled_e_step_keeps_its_digits_far_from_the_origin(covariance_type):
    # the sums are about the chunk's shift: an offset of 1e6 changes nothing but it
    rng = np.random.default_rng(3)
    params = random_params(rng, 4, 3, covariance_type=covariance_type)
    X = rng.normal(size=(2000, 3)) * 2
    near = chunk_pass(X, [EStep(params)])[0]
    offset = Params(params.weights, params.means + 1e6, params.prec_chol, covariance_type)
    far = chunk_pass(X + 1e6, [EStep(offset)])[0]
    np.testing.assert_allclose(far.nk, near.nk, rtol=1e-8)
    np.testing.assert_allclose(far.s1 / far.nk[:, None] + far.shift - 1e6,
                               near.s1 / near.nk[:, None] + near.shift, atol=1e-8)
    assert far.log_likelihood == pytest.approx(near.log_likelihood, rel=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_tiles_do_not_change_the_sums(monkeypatch, covariance_type):
    rng = np.random.default_rng(1)
    params = random_params(rng, 3, 4, covariance_type=covariance_type)
    X = rng.normal(size=(1001, 4)) * 3
    sums = []
    for rows in (8, 64, 128):
        monkeypatch.setattr(_fused, "TILE_ROWS", rows)
        monkeypatch.setattr(_fused_linear, "LINEAR_TILE_ROWS", rows)
        assert _fused.tile_rows(3, 4) == rows
        stats = chunk_pass(X, [EStep(params)])[0]
        sums.append((stats.nk, stats.s2, stats.log_likelihood))
    for nk, s2, ll in sums[1:]:
        np.testing.assert_allclose(nk, sums[0][0], rtol=1e-12)
        np.testing.assert_allclose(s2, sums[0][1], rtol=1e-12)
        assert ll == pytest.approx(sums[0][2], rel=1e-13)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_rows", [0, 1, 9, 300, 1000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_prediction_equals_numpy_kernels(covariance_type, n_rows, dtype):
    rng = np.random.default_rng(10 + n_rows)
    params = random_params(rng, 5, 4, center=-30.0, covariance_type=covariance_type)
    X = (rng.normal(size=(n_rows, 4)) * 4 - 30.0).astype(dtype)
    scores = assert_predictions_equal(X, params, dtype)
    alone = np.full(n_rows, np.nan)
    _fused_linear.predict(X, params, chunk_shift(X), scores=alone)
    np.testing.assert_array_equal(alone, scores)


@pytest.mark.parametrize("n_features", [1, 2, 5, 6, 17])
@pytest.mark.parametrize("factor", ["upper", "lower"])
def test_tile_kernel_whitens_by_the_factors_triangle(n_features, factor):
    """The M-step's upper-triangular precision factors whiten in two products that
    skip their zero block; a user's lower-triangular ``precisions_init`` in one.
    Both give the numpy kernels' sums and predictions (odd and even widths)."""
    rng = np.random.default_rng(n_features)
    params = random_params(rng, 4, n_features, center=-7.0)
    if factor == "lower":
        precisions = params.prec_chol @ params.prec_chol.transpose(0, 2, 1)
        params = Params(params.weights, params.means, np.linalg.cholesky(precisions), "full")
    parts = _fused_linear.kernel_parts(params)
    half = n_features // 2 if factor == "upper" else 0
    assert parts.first.shape == ((4 * half, half) if half else (0, 0))
    assert parts.whiten.shape == (4 * (n_features - half), n_features)
    X = rng.normal(size=(700, n_features)) * 2 - 7.0
    w = rng.uniform(0, 3, 700)
    assert_sums_equal(chunk_pass(X, [EStep(params)], sample_weight=w)[0],
                      numpy_e_step(X, params, w))
    assert_predictions_equal(X, params, np.float64)


def test_prediction_of_rows_with_holes_uses_the_kernel_for_the_complete_ones():
    rng = np.random.default_rng(4)
    params = random_params(rng, 3, 4, covariance_type="diag")
    X = rng.normal(size=(50, 4)) * 3
    X[[3, 17], 1] = np.nan
    log_resp, log_norm = log_resp_and_norm(X, params, nan_policy="omit")
    assert np.isnan(log_norm[[3, 17]]).all() and np.isfinite(np.delete(log_norm, [3, 17])).all()
    complete = np.delete(X, [3, 17], axis=0)
    shift = chunk_shift(X)
    reference = responsibilities(weighted_log_prob(RowBlock(complete, shift, None, 0),
                                                   params, shift))[1]
    np.testing.assert_allclose(np.delete(log_norm, [3, 17]), reference, rtol=1e-12)


def test_tiles_shrink_for_many_features():
    assert _fused.tile_rows(8, 16) == _fused.TILE_ROWS
    wide = _fused.tile_rows(16, 512)
    assert 8 <= wide < _fused.TILE_ROWS and wide % 8 == 0
    # the tile's buffers stay near the budget
    n_packed = 512 * 513 // 2
    assert wide * 8 * (n_packed + 16 * 512) <= 1.1 * _fused.TILE_BYTES


def test_component_with_zero_weight_gets_no_responsibility():
    rng = np.random.default_rng(2)
    params = random_params(rng, 3, 2)
    params.weights = np.array([0.5, 0.5, 0.0])
    X = rng.normal(size=(200, 2)) * 3
    stats = chunk_pass(X, [EStep(params)])[0]
    assert stats.nk[2] == 0.0 and np.all(stats.s2[2] == 0.0)
    assert np.isfinite(stats.log_likelihood)
    np.testing.assert_allclose(stats.nk, numpy_e_step(X, params).nk, rtol=1e-12)


def test_far_rows_get_exact_zero_responsibilities_not_subnormals():
    # one component far away: its responsibilities are below e^-700 and flushed
    params = Params(np.array([0.5, 0.5]), np.array([[0.0], [1e3]]),
                      precision_cholesky(np.ones((2, 1, 1)), "full"), "full")
    X = np.linspace(-1, 1, 50)[:, None]
    stats = chunk_pass(X, [EStep(params)])[0]
    assert stats.nk[1] == 0.0
    assert stats.nk[0] == pytest.approx(50.0, rel=1e-15)


def test_exponential_is_accurate_on_its_whole_range():
    x = np.concatenate([np.linspace(-700, 0, 200_001), -np.logspace(-300, 2.8, 1000), [0.0]])
    ours = _fused.exp_nonpositive(x)
    np.testing.assert_allclose(ours, np.exp(x), rtol=4e-16, atol=0)
    below = _fused.exp_nonpositive(np.array([-700.5, -745.0, -1e308, -np.inf]))
    assert np.all(below == 0.0)


def test_logarithm_is_accurate_on_normal_positive_numbers():
    x = np.concatenate([np.linspace(1.0, 1e3, 200_001), np.logspace(-300, 300, 10_001),
                        [2.0**-1022, np.sqrt(2.0), np.nextafter(np.sqrt(2.0), 2.0)]])
    ours = _fused.log_positive(x)
    reference = np.log(x)
    assert np.all(np.abs(ours - reference) <= 2 * np.spacing(np.abs(reference)) + 1e-300)
    assert _fused.log_positive(np.array([1.0]))[0] == 0.0


def test_numba_loads_on_the_first_e_step_not_on_import():
    code = (
        "import sys, numpy as np, dask_gmm\n"
        "assert 'numba' not in sys.modules\n"
        "X = np.random.default_rng(0).normal(size=(200, 2))\n"
        "dask_gmm.GaussianMixture(2, covariance_type='diag', max_iter=2).fit(X)\n"
        "assert 'numba' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


def test_kernels_compile_where_numba_cannot_keep_a_cache():
    # a function without a source file has no cache location: numba's
    # cache=True raises, our decorator compiles without the cache instead
    namespace = {}
    exec(compile("def double(x):\n    return 2 * x\n", "<no file>", "exec"), namespace)
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(namespace["double"])
    assert _fused.compiled()(namespace["double"])(21) == 42


def numpy_hard_assignment(X, centers, covariance_type, w=None, second_moments=True):
    """The numpy route of a k-means step: one-hot responsibilities, then the sums."""
    shift = chunk_shift(X)
    stats = empty_stats(len(centers), X.shape[1], covariance_type, shift, second_moments)
    block = RowBlock(np.asarray(X, dtype=np.float64), shift, w, 0)
    distances = ((block.Y[:, None, :] - (centers - shift)[None]) ** 2).sum(axis=2)
    labels = distances.argmin(axis=1)
    R = np.zeros((len(X), len(centers)))
    R[np.arange(len(X)), labels] = 1.0
    accumulate(stats, block, R)
    closest = distances[np.arange(len(X)), labels]
    stats.log_likelihood = -float(closest.sum() if w is None else closest @ w)
    return stats


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_rows", [0, 1, 9, 700])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_hard_assignment_equals_numpy(covariance_type, n_rows, dtype, weighted):
    from dask_gmm._requests import HardAssignment

    rng = np.random.default_rng(20 + n_rows)
    centers = rng.normal(size=(4, 5)) * 4 + 100.0
    X = (centers[rng.integers(0, 4, n_rows)] + rng.normal(size=(n_rows, 5))).astype(dtype)
    w = rng.uniform(0, 2, n_rows) if weighted else None
    for second_moments in (True, False):
        ours = chunk_pass(X, [HardAssignment(centers, covariance_type, second_moments)],
                          sample_weight=w)[0]
        reference = numpy_hard_assignment(X, centers, covariance_type, w, second_moments)
        np.testing.assert_array_equal(ours.nk, reference.nk)
        np.testing.assert_allclose(ours.s1, reference.s1, rtol=1e-11, atol=1e-9)
        if second_moments:
            np.testing.assert_allclose(ours.s2, reference.s2, rtol=1e-11, atol=1e-9)
        else:
            assert ours.s2 is None
        assert ours.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-11,
                                                    abs=1e-9)


@pytest.mark.parametrize("path", ["tiles", "wide rows"])
def test_compiled_kernels_stay_accurate_for_ill_conditioned_components(monkeypatch, path):
    """Condition number ~1e8, data far from the origin: scores and the E-step's
    log-likelihood against long double, as the numpy kernels are tested; through
    the tile kernels, and through the wide-row products (made to take these rows)."""
    from dask_gmm._predict import row_outputs

    if path == "wide rows":
        monkeypatch.setattr(_wide, "WIDE_FEATURES", 2)
        monkeypatch.setattr(_fused, "full_e_step", None)
    X, gm, exact = ill_conditioned_case()
    params = Params(gm.weights_, gm.means_, gm.precisions_cholesky_, "full")
    scores = row_outputs(X, params, ("score_samples",), np.float64)["score_samples"]
    assert np.abs(scores - exact).max() < 1e-8
    total = chunk_pass(X, [EStep(params)])[0].log_likelihood
    assert abs(total - float(exact.sum())) < 1e-8 * len(X)


@pytest.mark.parametrize("n_rows", [0, 1, 300, 3000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("factor", ["upper", "lower"])
def test_wide_full_covariances_take_products_over_many_rows(monkeypatch, n_rows, dtype,
                                                            weighted, factor):
    """From WIDE_FEATURES features on, full covariances skip the tile kernel (spied on)
    and give the numpy kernels' sums and predictions; sub-blocks of 512 rows here.
    The M-step's precision factors are upper triangular, and the wide path skips
    their zero block; a user's ``precisions_init`` gives lower ones."""
    n_features = _wide.WIDE_FEATURES
    monkeypatch.setattr(_wide, "WIDE_FLOATS", 512 * 3 * n_features)
    monkeypatch.setattr(_fused, "full_e_step", None)  # never called at this width
    monkeypatch.setattr(_fused_linear, "predict_rows", None)
    rng = np.random.default_rng(n_rows)
    params = random_params(rng, 3, n_features, center=20.0)
    if factor == "lower":
        precisions = params.prec_chol @ params.prec_chol.transpose(0, 2, 1)
        params = Params(params.weights, params.means, np.linalg.cholesky(precisions), "full")
    X = (rng.normal(size=(n_rows, n_features)) * 2 + 20.0).astype(dtype)
    w = rng.uniform(0, 3, n_rows) if weighted else None
    assert_sums_equal(chunk_pass(X, [EStep(params)], sample_weight=w)[0],
                      numpy_e_step(X, params, w))
    assert_predictions_equal(X, params, dtype)



def kernel_requests(rng, n_features, covariance_type):
    """The passes whose kernels check the rows as they read them."""
    from dask_gmm._requests import HardAssignment, LogLikelihood

    params = random_params(rng, 3, n_features, center=5.0, covariance_type=covariance_type)
    return {"e-step": EStep(params), "log-likelihood": LogLikelihood(params),
            "k-means step": HardAssignment(params.means, covariance_type)}


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_features", [3, _wide.WIDE_FEATURES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_report_the_sum_of_squares_the_row_check_needs(covariance_type, n_features,
                                                               dtype):
    """Each kernel reports the sum of the squares of the rows it read (the row
    check's figure, so the check needs no read of its own)."""
    rng = np.random.default_rng(n_features)
    X = (rng.normal(size=(777, n_features)) * 3 + 5.0).astype(dtype)
    expected = float(np.sum(X.astype(np.float64) ** 2))
    for name, request in kernel_requests(rng, n_features, covariance_type).items():
        stats = request.empty(n_features, chunk_shift(X))
        block = RowBlock(X, stats.shift, None, 0)
        request.accumulate(block, stats, request.start_chunk(0))
        assert block.squares == pytest.approx(expected, rel=1e-9), name


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_features", [3, _wide.WIDE_FEATURES])
@pytest.mark.parametrize("value, message", [
    (np.nan, r"Input X contains NaN in chunk 4: rows \[11234\]"),
    (np.inf, r"Input X contains infinity in chunk 4: rows \[11234\]"),
    (3e150, r"values up to 3e\+150 in chunk 4 \(rows \[11234\]\): .*overflow")])
def test_rows_checked_by_the_kernels_get_the_clear_error(covariance_type, n_features, value,
                                                         message):
    """A bad value reaches the kernels before the check now; they must not fail
    (no division by zero, no warning) and the check's message names the row."""
    import warnings

    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, n_features)) * 3 + 5.0
    X[1234, 1] = value
    for request in kernel_requests(rng, n_features, covariance_type).values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=message):
                chunk_pass(X, [request], row_start=10_000, chunk_index=4)


def test_a_pass_of_kernels_takes_each_chunk_in_one_block(monkeypatch):
    """Few blocks per chunk: few hand-overs of the GIL between a chunk task's
    Python and its kernels. Smaller blocks give the same sums."""
    from dask_gmm import _estep

    rng = np.random.default_rng(2)
    params = random_params(rng, 4, 5, covariance_type="diag")
    X = rng.normal(size=(40_000, 5)) * 3
    calls = []
    e_step = _fused_linear.e_step
    monkeypatch.setattr(_fused_linear, "e_step",
                        lambda block, *a, **k: calls.append(block.n) or e_step(block, *a, **k))
    whole = chunk_pass(X, [EStep(params)])[0]
    assert calls == [40_000]
    monkeypatch.setattr(_estep, "KERNEL_BLOCK_BYTES", 8 * 5 * 3000)
    calls.clear()
    parts = chunk_pass(X, [EStep(params)])[0]
    assert calls == [3000] * 13 + [1000]
    assert_sums_equal(parts, whole)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("value, message", [
    (np.nan, r"Input X contains NaN in chunk 4: rows \[11234\]"),
    (3e150, r"values up to 3e\+150 in chunk 4 \(rows \[11234\]\): .*overflow")])
def test_prediction_kernel_checks_the_rows_it_reads(covariance_type, value, message):
    import warnings

    from dask_gmm._estep import RowPlace
    from dask_gmm._predict import row_outputs

    rng = np.random.default_rng(3)
    params = random_params(rng, 3, 4, covariance_type=covariance_type)
    X = rng.normal(size=(1500, 4))
    X[1234, 2] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message):
            row_outputs(X, params, ("labels", "proba", "score_samples"), np.float64,
                        place=RowPlace((10_000,), chunk_index=4))
