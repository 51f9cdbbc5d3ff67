"""What the command line prints about a model or a sweep."""

from __future__ import annotations

import functools

import click
import numpy as np

from ._options import EFFECTIVE_WEIGHT


def print_model(model, stream=None):
    """The model's kind, fit summary and components, heaviest first."""
    echo = functools.partial(click.echo, file=stream)
    n_components, n_features = model.means_.shape
    bayesian = type(model).__name__ == "BayesianGaussianMixture"
    if bayesian:
        used = model.n_effective_components_
        echo(f"BayesianGaussianMixture: {used} effective components of {n_components} "
             f"(weight >= {EFFECTIVE_WEIGHT:g}), covariance_type={model.covariance_type!r}, "
             f"{model.weight_concentration_prior_type} prior "
             f"{model.weight_concentration_prior_:g}, {n_features} features, "
             f"dtype {model.means_.dtype}")
        bound = "variational lower bound"
    else:
        echo(f"GaussianMixture: {n_components} components, covariance_type="
             f"{model.covariance_type!r}, {n_features} features, dtype {model.means_.dtype}")
        bound = "lower bound (mean log-likelihood)"
    echo(f"  converged: {model.converged_}, EM iterations: {model.n_iter_}, "
         f"{bound}: {model.lower_bound_:.6f}")
    if hasattr(model, "n_passes_"):  # just fitted (a loaded model does not keep it)
        echo(f"  reads: {model.n_passes_} passes over the data, "
             f"{model.bytes_read_ / 2**20:.1f} MiB from storage"
             + (" (kept in memory after the first read)" if model.persisted_ else ""))
    if getattr(model, "feature_dim_", None) or model.nan_policy != "raise":
        names = getattr(model, "feature_names_in_", None)
        echo(f"  features: dim {model.feature_dim_!r}"
             + (f" {list(names)}" if names is not None else "")
             + f", nan_policy={model.nan_policy!r}")
    order = np.argsort(model.weights_)[::-1]
    for k in order:
        mean = np.array2string(model.means_[k], precision=3, max_line_width=10_000,
                               threshold=8)
        echo(f"  component {k}: weight {model.weights_[k]:.4f}, mean {mean}")


def results_table(results):
    """A sweep's ``results_`` as text, one row per candidate."""
    bayesian = "n_effective" in results
    if bayesian:
        lines = ["   prior  covariance      K  effective    lower bound  iters  passes"
                 "  converged"]
    else:
        lines = ["    K  covariance         BIC            AIC    lower bound  iters  passes"
                 "  converged"]
    for i in range(len(results["n_components"])):
        head = (f"{results['weight_concentration_prior'][i]:8.3g}  "
                f"{results['covariance_type'][i]:9s}  {results['n_components'][i]:5d}"
                if bayesian else
                f"{results['n_components'][i]:5d}  {results['covariance_type'][i]:9s}")
        if results["error"][i]:
            lines.append(f"{head}  failed: {results['error'][i]}")
            continue
        middle = (f"  {results['n_effective'][i]:9d}  {results['lower_bound'][i]:13.4f}"
                  if bayesian else
                  f"  {results['bic'][i]:13.2f}  {results['aic'][i]:13.2f}"
                  f"  {results['lower_bound'][i]:12.6f}")
        lines.append(f"{head}{middle}  {results['n_iter'][i]:5d}"
                     f"  {results['n_passes'][i]:6d}  {str(bool(results['converged'][i])):9s}")
    return "\n".join(lines)
