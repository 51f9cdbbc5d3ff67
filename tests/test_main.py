"""The README's main-job command, on small data."""

from dask_gmm.__main__ import main


def test_main_job_recovers_the_generated_mixture(capsys):
    main(["--n-samples", "20000", "--chunk-rows", "3000", "--n-components", "3"])
    out = capsys.readouterr().out
    assert "20,000 rows x 8 features in 7 chunks" in out
    ari = float(out.rsplit("true labels:", 1)[1])
    assert ari > 0.99
