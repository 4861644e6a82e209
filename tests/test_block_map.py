"""The terminal block map (petals_ops.swarm.block_map): golden text on a synthetic BLOOM-176B-sized snapshot
(70 blocks, 30 servers, some blocks uncovered) at 100 columns (one band) and 60 (wrapped), the grouping of
a public-swarm-sized snapshot, and ``swarm status`` on the real local swarm.

The golden files (tests/golden/block_map_*.txt) were reviewed by eye; after a deliberate change of the
drawing, regenerate them with ``PETALS_OPS_UPDATE_GOLDEN=1 pytest tests/test_block_map.py`` and review
the diff.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from petals_ops.swarm.block_map import ABSENT, UNCOVERED, block_map, map_rows
from petals_ops.swarm.health import BlockHealth, ServerRecord, SwarmSnapshot

GOLDEN = Path(__file__).parent / "golden"


def bloom_176b_like(num_servers: int = 30, seed: int = 7) -> SwarmSnapshot:
    """70 blocks; servers with 4-16 block spans, mostly ONLINE; blocks 0:2, 30:34 and 69:70 held by no
    ONLINE server."""
    rng = random.Random(seed)
    servers, held = [], {i: {} for i in range(70)}
    for i in range(num_servers):
        start = rng.randrange(0, 62)
        end = min(70, start + rng.choice([4, 8, 10, 16]))
        state = rng.choices(["ONLINE", "JOINING", "OFFLINE"], [8, 1, 1])[0]
        peer = f"12D3KooW{i:04d}x{rng.randrange(16 ** 6):06x}"
        name = None if i % 3 == 0 else f"host-{i}"
        servers.append(ServerRecord(peer, state, start, end, 100.0, public_name=name))
        for b in range(start, end):
            held[b][peer] = state
    blocks = [BlockHealth(i, f"bigscience/bloom-petals.{i}", held[i]) for i in range(70)]
    return SwarmSnapshot("bigscience/bloom", "bigscience/bloom-petals", 70, 0.0, 0.0, blocks, servers)


def render(renderable, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, legacy_windows=False).print(renderable)
    return buf.getvalue()


@pytest.mark.parametrize("width", [100, 60])
def test_golden_bloom_176b(width):
    snap = bloom_176b_like()
    assert snap.uncovered_blocks == [0, 1, 30, 31, 32, 33, 69]  # the holes the golden text must show
    text = render(block_map(snap, {snap.servers[0].peer_id}), width)
    path = GOLDEN / f"block_map_bloom176b_w{width}.txt"
    if os.environ.get("PETALS_OPS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), (f"block map differs from {path} "
                                      "(PETALS_OPS_UPDATE_GOLDEN=1 regenerates it)")
    assert max(len(line) for line in text.splitlines()) <= width


def test_map_structure():
    """What the golden text shows, checked directly: columns line up, holes are under the ✗s."""
    snap = bloom_176b_like()
    lines = render(block_map(snap), 100).splitlines()
    coverage = next(line for line in lines if line.startswith("ONLINE/block"))
    cols = [i for i, ch in enumerate(coverage) if ch == UNCOVERED]
    assert len(cols) == len(snap.uncovered_blocks)
    rows = [line for line in lines[2:] if len(line) > cols[-1] and not line.startswith(("█", "ONLINE"))]
    assert len(rows) == 30
    for line in rows:  # under a ✗, no server row shows an ONLINE glyph
        assert all(line[c] != "█" for c in cols), line
    assert "no ONLINE server: blocks 0:2, 30:34, 69:70" in lines[-1]


def test_hostile_names_are_plain_text():
    snap = bloom_176b_like(3)
    servers = [ServerRecord(s.peer_id, s.state, s.start_block, s.end_block, s.throughput,
                            public_name=name)
               for s, name in zip(snap.servers, ["[bold red]x[/]", "a\nb\x1b[2J", "宽宽宽宽宽宽宽"])]
    text = render(block_map(SwarmSnapshot(**{**snap.__dict__, "servers": servers})), 100)
    assert " [bold red]x " in text  # rich markup in a name is not interpreted (cut to the name column)
    assert "\x1b" not in text and "a?b?[2J" in text
    rows = text.splitlines()[2:5]
    assert "宽宽宽宽宽" in rows[2]
    assert {cell_len(line) for line in rows} == {cell_len(text.splitlines()[1])}, text  # columns stay aligned


def test_many_servers_are_grouped():
    snap = bloom_176b_like(400, seed=3)
    rows = map_rows(snap, max_rows=40)
    assert sum(r.count for r in rows) == 400 and len(rows) < 400
    text = render(block_map(snap, max_rows=40), 120)
    assert "servers" in text and len(text.splitlines()) <= 40 + 5


def test_empty_and_absent():
    snap = SwarmSnapshot("m", "m-petals", 4, 0.0, 0.0, [BlockHealth(i, f"m.{i}", {}) for i in range(4)], [])
    text = render(block_map(snap), 80)
    assert UNCOVERED * 4 in text and "blocks 0:4" in text
    assert ABSENT == "·"


@pytest.mark.swarm
def test_swarm_status_draws_the_map(run_cli, local_swarm):
    result = run_cli("swarm", "status", "--swarm-dir", local_swarm.run_dir, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"block map of {local_swarm.dht_prefix}" in out
    coverage = next(line for line in out.splitlines() if line.startswith("ONLINE/block"))
    assert coverage.split()[-1] == "1" * local_swarm.num_blocks  # 0:2 and 2:4, one server each
    assert "every block has an ONLINE server" in out and UNCOVERED not in out
    assert out.count("█" * 2) >= 2  # each server's two blocks
    rows = [line for line in out.splitlines() if line.rstrip().endswith(("██··", "··██"))]
    assert len(rows) == 2 and all(row.startswith("*") for row in rows), "both servers are ours: marked *"
