"""deploy/: the YAML parses, and the commands in it are real dask-gmm and dask commands."""

import py_compile
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from dask_gmm.cli import main

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASK = Path(sys.executable).with_name("dask")


def yaml_documents():
    for path in sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml")):
        yield path, list(yaml.safe_load_all(path.read_text()))


def commands_in(node):
    """Every command list (``command:`` / ``args:``) in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("command", "args") and isinstance(value, list):
                yield [str(v) for v in value]
            else:
                yield from commands_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from commands_in(item)


def split_shell(words):
    """``sh -c 'a && b'`` -> [a, b] as word lists; plain commands unchanged."""
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in words[2].split("&&")]
    return [words]


def all_commands():
    found = []
    for path, documents in yaml_documents():
        for document in documents:
            for command in commands_in(document):
                found.extend((path.name, c) for c in split_shell(command))
    script = (DEPLOY / "hpc" / "slurm_cli.sh").read_text().replace("\\\n", " ")
    for line in script.splitlines():
        if line.startswith(("dask-gmm ", "dask ", "srun dask ")):
            words = shlex.split(line.rstrip("&").strip())
            found.append(("slurm_cli.sh", words[1:] if words[0] == "srun" else words))
    return found


def check_dask_gmm(words):
    """Parse a dask-gmm command line with the real click command, without running it."""
    assert words[0] == "dask-gmm"
    subcommand = main.get_command(click.Context(main), words[1])
    assert subcommand is not None, f"no dask-gmm subcommand {words[1]!r}"
    subcommand.make_context(words[1], words[2:])


def test_every_yaml_file_parses():
    paths = [path.name for path, documents in yaml_documents() if documents]
    assert {"docker-compose.yml", "daskcluster.yaml", "job.yaml"} <= set(paths)


def test_compose_has_scheduler_workers_and_a_sweep_job():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"scheduler", "worker", "job"} <= set(compose["services"])
    job = " ".join(compose["services"]["job"]["command"])
    assert "dask-gmm sweep" in job and "--scheduler tcp://scheduler:8786" in job


def test_manifests_are_a_daskcluster_and_a_job():
    cluster = yaml.safe_load((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    job = yaml.safe_load((DEPLOY / "kubernetes" / "job.yaml").read_text())
    assert cluster["kind"] == "DaskCluster" and job["kind"] == "Job"
    scheduler = f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    assert scheduler in job["spec"]["template"]["spec"]["containers"][0]["command"]


@pytest.mark.parametrize("source, words", [c for c in all_commands() if c[1][0] == "dask-gmm"],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_dask_gmm_commands_parse(source, words):
    check_dask_gmm(words)


def test_dask_commands_use_real_options():
    helps = {}
    for source, words in all_commands():
        if words[0] != "dask":
            continue
        sub = words[1]
        if sub not in helps:
            helps[sub] = subprocess.run([str(DASK), sub, "--help"], capture_output=True,
                                        text=True, timeout=60).stdout
        for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert option in helps[sub], f"{source}: 'dask {sub}' has no option {option}"
    assert {"scheduler", "worker"} <= set(helps)


def test_a_wrong_option_would_be_caught():
    with pytest.raises(click.UsageError):
        check_dask_gmm(["dask-gmm", "sweep", "data.zarr", "--no-such-option"])


def test_jobqueue_example_compiles():
    py_compile.compile(str(DEPLOY / "hpc" / "jobqueue_sweep.py"), doraise=True)
