"""ruff's rules (pyproject.toml: pyflakes, the E4/E7/E9 errors and E501, lines up to 110 columns) hold on
the whole repository: a long line or an unused import fails CI, not a later review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
