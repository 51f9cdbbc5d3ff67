"""The command line as a person runs it: in a terminal, with progress bars on.

CI has no terminal, so each test makes a pseudo-terminal (sized 24 x 100 like a
real one), runs the installed console script on it and reads everything it
draws. The process group is killed if a test fails or times out.
"""

import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from dask_gmm import load

ENTRY_POINT = Path(sys.executable).with_name("dask-gmm")


def command(*args):
    base = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "dask_gmm"]
    return base + [str(a) for a in args]


def in_terminal(*args, timeout=240):
    """Run ``dask-gmm ARGS`` on a new pseudo-terminal; return (exit code, screen text)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(command(*args), stdin=slave, stdout=slave, stderr=slave,
                               start_new_session=True, close_fds=True)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not data:
                    break
                output += data
            elif process.poll() is not None:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
    return code, output.decode(errors="replace")


def bar_lines(screen, label):
    """Every state a tqdm bar labelled ``label`` was drawn in."""
    return [part.strip() for part in screen.replace("\r", "\n").split("\n")
            if part.strip().startswith(f"{label}:")]


@pytest.mark.parametrize("scheduler", ["local", "threads"])
def test_demo_in_a_terminal_draws_progress_and_succeeds(tmp_path, scheduler):
    code, screen = in_terminal("demo", "--n-samples", 20000, "--out-dir", tmp_path / "demo",
                               "--scheduler", scheduler)
    assert code == 0, screen
    assert "Traceback" not in screen and "Error" not in screen
    assert " 1 workers" not in screen and " 1 threads" not in screen
    ari = float(screen.split("against the truth:")[1].split()[0])
    assert ari > 0.95
    assert any("100%" in line for line in bar_lines(screen, "generate"))
    sweep_bars = bar_lines(screen, "sweep")
    # the sweep bar moves pass by pass, not candidate by candidate at the end
    assert len({line.split("pass")[0] for line in sweep_bars}) >= 3
    assert any("finished=16/16" in line for line in sweep_bars)
    assert bar_lines(screen, "fit")
    assert any("100%" in line for line in bar_lines(screen, "predict"))
    labels = zarr.open_group(tmp_path / "demo" / "labels.zarr", mode="r")
    assert labels["labels"].shape == (20000,) and labels["proba"].shape == (20000, 5)


@pytest.mark.parametrize("scheduler", ["local", "threads"])
def test_generate_fit_sweep_predict_in_a_terminal(tmp_path, scheduler):
    data = tmp_path / "data.zarr"
    code, screen = in_terminal("generate", data, "--n-samples", 8000, "--n-features", 3,
                               "--n-components", 3, "--chunk-rows", 1000, "--seed", 2)
    assert code == 0, screen
    assert any("8.00k/8.00k" in line for line in bar_lines(screen, "generate"))

    code, screen = in_terminal("fit", data, "-k", 3, "--seed", 0, "--out",
                               tmp_path / "m.npz", "--scheduler", scheduler)
    assert code == 0, screen
    assert "model written to" in screen and any("pass" in line
                                                for line in bar_lines(screen, "fit"))

    code, screen = in_terminal("sweep", data, "-k", "1:3", "--covariance-type", "diag,full",
                               "--seed", 0, "--scheduler", scheduler)
    assert code == 0, screen
    assert "best by BIC: 3 components" in screen and bar_lines(screen, "sweep")

    for out in ("labels.zarr", "labels.h5"):
        code, screen = in_terminal("predict", data, "--model", tmp_path / "m.npz", "--out",
                                   tmp_path / out, "--proba", "--score-samples",
                                   "--scheduler", scheduler)
        assert code == 0, screen
        assert any("100%" in line for line in bar_lines(screen, "predict"))
    X = zarr.open_group(data, mode="r")["X"][:]
    expected = load(tmp_path / "m.npz").predict(X)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "labels.zarr")["labels"][:],
                                  expected)
    import h5py

    with h5py.File(tmp_path / "labels.h5", "r") as f:
        np.testing.assert_array_equal(f["labels"][:], expected)
        assert f["labels"].chunks == (1000,) and f["proba"].shape == (8000, 3)


def _port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_no_dashboard_no_port_warning_and_dashboard_link_when_asked(tmp_path):
    data = tmp_path / "data.zarr"
    in_terminal("generate", data, "--n-samples", 3000, "--n-features", 2, "--n-components",
                2, "--chunk-rows", 1000)
    holder = None
    if _port_free(8787):  # hold the dashboard's usual port, as another cluster would
        holder = socket.socket()
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    try:
        result = subprocess.run(command("fit", data, "-k", 2, "--out", tmp_path / "a.npz",
                                        "--no-progress"), capture_output=True, text=True,
                                timeout=240)
    finally:
        if holder is not None:
            holder.close()
    assert result.returncode == 0, result.stderr
    assert "8787" not in result.stderr and result.stderr.strip() == ""
    result = subprocess.run(command("fit", data, "-k", 2, "--out", tmp_path / "b.npz",
                                    "--no-progress", "--dashboard", "127.0.0.1:0"),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "dashboard: http://127.0.0.1:" in result.stderr


def test_predict_with_a_model_of_another_width_fails_before_its_progress_bar(tmp_path):
    data = tmp_path / "narrow.zarr"
    zarr.save_array(str(data), np.random.default_rng(0).normal(size=(3000, 2)))
    wide = np.random.default_rng(1).normal(size=(3000, 4))
    from dask_gmm import GaussianMixture

    GaussianMixture(2, random_state=0).fit(wide).save(tmp_path / "m.npz")
    code, screen = in_terminal("predict", data, "--model", tmp_path / "m.npz", "--out",
                               tmp_path / "labels.zarr")
    assert code == 1, screen
    assert "X has 2 features, but GaussianMixture is expecting 4 features" in screen
    assert not bar_lines(screen, "predict") and "Traceback" not in screen
    assert not (tmp_path / "labels.zarr").exists()
