"""Hostile and careless inputs (issue 12): each case ends in one line, never a traceback, a leaked
secret or unbounded work. Fast: no swarm, no hosts (port 9 on loopback has nothing listening)."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.helpers import assert_one_line_error

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


def write(tmp_path, data, name="inv.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- inventory YAML -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, needle",
    [
        (BILLION_LAUGHS, "expands to more than"),
        ("a: &a [*a]\n", "recursive"),
        ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nests deeper"),
    ],
    ids=["billion-laughs", "recursive-alias", "deep-100000", "deep-100"],
)
def test_inventory_yaml_bombs_are_refused_quickly(tmp_path, run_cli, text, needle):
    path = write(tmp_path, text)
    started = time.monotonic()
    result = run_cli("plan", "-i", path, timeout=60)
    assert_one_line_error(result, str(path), needle, code=2)
    assert time.monotonic() - started < 30


def test_inventory_aliases_within_bounds_still_work(tmp_path):
    from petals_ops.fleet.inventory import load_inventory

    path = write(tmp_path, "server: &s {device: cpu, port: 4000}\n"
                           "hosts:\n  a: {gpus: 0, server: *s}\n  b: {gpus: 0, server: {<<: *s, port: 5000}}\n")
    inv = load_inventory(path)
    assert inv.server_for("a").port == 4000 and inv.server_for("b").port == 5000
