"""The terminal block map (petals_ops.swarm.block_map): golden text on a synthetic BLOOM-176B-sized snapshot
(70 blocks, 30 servers, some blocks uncovered) at 100 columns (one band) and 60 (wrapped), the grouping of
a public-swarm-sized snapshot, and ``swarm status`` on the real local swarm.

The golden files (tests/golden/block_map_*.txt) were reviewed by eye; after a deliberate change of the
drawing, regenerate them with ``PETALS_OPS_UPDATE_GOLDEN=1 pytest tests/test_block_map.py`` and review
the diff.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from petals_ops.swarm.block_map import ABSENT, UNCOVERED, block_map, map_rows
from petals_ops.swarm.health import BlockHealth, ServerRecord, SwarmSnapshot
from tests.helpers import assert_one_line_error

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


def test_zero_blocks_is_not_every_block_served():
    """Issue 23.15: a model with 0 blocks was drawn as "every block has an ONLINE server" and passed the
    client commands' coverage check."""
    from petals_ops.util.errors import OpsError

    snap = SwarmSnapshot("m", "m-petals", 0, 0.0, 0.0, [], [])
    text = render(block_map(snap), 80)
    assert "every block has an ONLINE server" not in text and "no blocks" in text
    assert not snap.fully_served
    with pytest.raises(OpsError, match="knows no blocks of m-petals"):
        snap.require_full_coverage()


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


HOSTILE = ("\x1b[2J\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ [link=http://evil.example/]x[/link]"
           " [bold red]y[/] :smile: \u202e\x07\x9b31m")


def _assert_inert(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e"), repr(text)  # a rich link would be ESC ]8


@pytest.mark.swarm
def test_swarm_status_shows_hostile_announcements_as_plain_text(run_cli, local_swarm):
    """Issue 23 #2: a server of a public swarm picks its name, version, dtype: ESC sequences and rich
    markup in them reach neither the table, the map, nor the JSON as anything but inert text."""
    from petals_ops.monitoring.simulate import fake_peer_id, server_record, store_records

    peer, prefix = fake_peer_id(), "hostile-petals"
    value = server_record(start_block=0, end_block=2, public_name=HOSTILE, version=HOSTILE,
                          torch_dtype=HOSTILE, quant_type=HOSTILE, adapters=(HOSTILE,))
    store_records(local_swarm.initial_peers, [(f"{prefix}.{i}", peer, value) for i in range(2)]
                  + [("_petals.models", prefix, {"num_blocks": 2, "repository": HOSTILE})])
    args = ("swarm", "status", "--initial-peers", *local_swarm.initial_peers, "--model", "hostile/x",
            "--dht-prefix", prefix, "--probe-timeout", "2s")
    result = run_cli(*args, timeout=120)
    # the fake server has no process behind it: the probe finds it unreachable, so its blocks are down
    assert result.returncode == 1 and "DEGRADED: blocks 0:2" in result.stdout, result.stderr
    _assert_inert(result.stdout + result.stderr)
    assert "[link=http://evil.e" in result.stdout and "[bold red]y[/]" in result.stdout  # as text
    assert "?[2J" in result.stdout and ":smile:" in result.stdout  # ESC and emoji codes shown, not run
    data = json.loads(run_cli(*args, "-o", "json", timeout=120).stdout)
    assert data["servers"][0]["public_name"].startswith("\x1b[2J")  # JSON keeps the data, escaped


@pytest.mark.swarm
@pytest.mark.parametrize("count", ["70", 2.5, 0, -3, 3_000_000, None, [70], True])
def test_swarm_status_refuses_a_bad_announced_block_count(run_cli, local_swarm, count):
    """Issue 23 #6: any peer can write a model's _petals.models record: text, a float, 0 or 3,000,000
    blocks are refused in one line (never a traceback, nor a 3,000,000-key walk)."""
    from petals_ops.monitoring.simulate import store_records

    prefix = f"badcount-{abs(hash(repr(count))) % 10**8}-petals"
    store_records(local_swarm.initial_peers, [("_petals.models", prefix, {"num_blocks": count})])
    started = time.monotonic()
    result = run_cli("swarm", "status", "--initial-peers", *local_swarm.initial_peers, "--model", "bad/x",
                     "--dht-prefix", prefix, timeout=120)
    assert time.monotonic() - started < 60
    assert_one_line_error(result, "_petals.models record of " + prefix, "--num-blocks", code=1)


def test_snapshot_bounds_what_servers_announce():
    """Issue 23 #6, the server side of it: announced strings are cut to MAX_ANNOUNCED_CHARS, block ranges
    that do not fit the model or where the server was found are replaced by where it was found, and
    negative or NaN figures are dropped."""
    from types import SimpleNamespace as NS

    from petals_ops.client.models import ModelRef
    from petals_ops.swarm.health import MAX_ANNOUNCED_CHARS, build_snapshot

    def info(**kw):
        base = dict(state=NS(name="ONLINE"), start_block=None, end_block=None, throughput=1.0,
                    cache_tokens_left=None, version=None, torch_dtype=None, quant_type=None,
                    public_name=None, using_relay=None, inference_rps=None, forward_rps=None,
                    network_rps=None)
        return NS(**{**base, **kw})

    huge = info(public_name="n" * 10**6, version=["not", "a", "string"], start_block=0, end_block=3_000_000,
                throughput=float("nan"), cache_tokens_left=-5)
    fine = info(start_block=1, end_block=3, public_name="ok")
    infos = [NS(uid=f"m.{i}", servers={"QmHuge": huge, **({"QmFine": fine} if i in (1, 2) else {})})
             for i in range(3)]
    snap = build_snapshot(ModelRef("m", "m", 3), infos, taken_at=0.0, walk_seconds=0.0)
    big, ok = snap.server("QmHuge"), snap.server("QmFine")
    assert len(big.public_name) == MAX_ANNOUNCED_CHARS and big.version is None
    assert (big.start_block, big.end_block) == (0, 3) and big.throughput == 0.0
    assert big.cache_tokens_left is None
    assert (ok.start_block, ok.end_block, ok.public_name) == (1, 3, "ok")
