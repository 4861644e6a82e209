"""The architecture as a checked contract: import-linter's contracts in pyproject.toml (layers, the one
door to petals, no cycles) hold for the tree, and they do catch a violation (checked on a copy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout, result.stdout[-2000:]


def test_import_contracts_catch_violations(tmp_path):
    """A copy of the package with an upward import, a cycle and petals imported outside the door fails."""
    shutil.copytree(REPO / "petals_ops", tmp_path / "petals_ops",
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    util_errors = tmp_path / "petals_ops" / "util" / "errors.py"
    upward = "\n\ndef _up():\n    from petals_ops.bench import stats\n"
    util_errors.write_text(util_errors.read_text() + upward)
    stats = tmp_path / "petals_ops" / "bench" / "stats.py"
    door_and_cycle = "\n\ndef _petals():\n    import petals\n    from petals_ops.bench import report\n"
    stats.write_text(stats.read_text() + door_and_cycle)
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    out = result.stdout
    assert "petals_ops.util.errors -> petals_ops.bench.stats" in out, out[-3000:]
    assert "petals_ops.bench.stats -> petals" in out, out[-3000:]
    assert "No cycles are allowed in petals_ops.bench" in out, out[-3000:]
    assert "0 kept, 3 broken" in out, out[-3000:]
