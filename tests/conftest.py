"""Shared pytest fixtures. Data fixtures are prefixed ``data_``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from atp.ladder.jobs import THREAD_VARIABLES, threads_per_job


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), each worker and the commands it starts get their
    share of the cores, as the ladder's concurrent jobs do: OpenMP threads that outnumber the cores spin against
    each other and are far slower."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, str(threads_per_job(int(workers))))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def data_fixture_root(tmp_path_factory) -> Path:
    """A read-only data_dir with tiny GTA5, SYNTHIA, Cityscapes, ACDC and Dark Zurich trees."""
    from tests.helpers.data_trees import write_all

    return write_all(tmp_path_factory.mktemp("data_fixtures"))


@pytest.fixture
def data_fixture_copy(data_fixture_root, tmp_path) -> Path:
    """A private copy of :func:`data_fixture_root` that a test may damage."""
    return Path(shutil.copytree(data_fixture_root, tmp_path / "data"))


@pytest.fixture
def data_compose() -> Callable[..., DictConfig]:
    """``data_compose(name, data_dir, *overrides)`` → the composed ``dataset`` node of conf/dataset/<name>.yaml,
    with scales set to the 64×32 fixture size and 16×16 crops unless overridden."""
    from atp.config import compose_cli

    def compose(name: str, data_dir: Path, *overrides: str) -> DictConfig:
        args = [f"dataset={name}", f"paths.data_dir={data_dir}"]
        if name != "toy":
            args += ["dataset.crop_size=[16,16]"] + [
                f"dataset.{role}.scale=[64,32]" for role in ("source", "target", "target_val")
            ]
        return compose_cli(args + list(overrides)).dataset

    return compose


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Path:
    """A scratch folder for one test module's shared fixtures, removed when the module ends unless one of its
    tests failed. Checkpoints of the module-scoped runs add up to several GB; CI's disk is not that large."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_toy_root(tmp_path_factory) -> Path:
    """A small toy domain shift (12 source, 8 target, 4 val images at 64×32) as paths.data_dir."""
    from atp.data.toy import generate_toy

    data_dir = tmp_path_factory.mktemp("data_toy")
    generate_toy(data_dir / "toy", n_source=12, n_target=8, n_val=4, seed=0, size=(64, 32))
    return data_dir


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a test module: two OpenMP threads on a shared 2-core machine are far slower
    when it is busy (use with ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
