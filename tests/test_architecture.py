"""The layers hold: import-linter's contracts in pyproject.toml (simulators <- training <- collab_app,
and the sandbox importing nothing of the project), checked on this tree and shown to bite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("simulators", "training", "collab_app")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(lint), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_the_contracts_catch_an_import_against_the_layers(tmp_path):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "simulators" / "domain.py", "a") as domain:
        domain.write("\nimport training.sweet  # against the layers\n")
    with open(tmp_path / "simulators" / "sandbox" / "server.py", "a") as sandbox:
        sandbox.write("\nimport simulators.domain  # the server loads this package alone\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "0 kept, 2 broken" in done.stdout, done.stdout[-3000:]
    assert "simulators.domain -> training.sweet" in done.stdout
