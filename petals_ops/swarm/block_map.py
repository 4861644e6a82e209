"""The terminal block map: which server holds which blocks, one character per block, holes obvious.

``block_map(snapshot)`` is a pure function returning a rich renderable (``swarm status`` prints it). It
fits the console's width: blocks come in groups of 10 and wrap into bands of whole groups, so BLOOM-176B's
70 blocks fit one band at 100 columns and wrap below that (a band lists only the rows holding its blocks).
Above ``max_rows`` servers, servers with the same blocks and state share one row (``×N``), so a public
swarm stays a screenful. The coverage row shows ONLINE servers per block and a red ``✗`` where there is
none. The glyphs carry the state without colour. Announced names are shown as plain text (never rich
markup), control characters replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rich.cells import set_cell_size
from rich.console import Console, ConsoleOptions
from rich.text import Text

from petals_ops.swarm.health import SwarmSnapshot, format_block_ranges
from petals_ops.util.safe_text import printable

GLYPH = {"ONLINE": "█", "JOINING": "▒", "OFFLINE": "░", "UNREACHABLE": "?"}
ABSENT = "·"
UNCOVERED = "✗"
STYLE = {"ONLINE": "green", "JOINING": "yellow", "OFFLINE": "red", "UNREACHABLE": "magenta",
         ABSENT: "bright_black"}
GROUP = 10  # blocks per group; a space between groups
NAME_CELLS = 11
LABEL_CELLS = 1 + NAME_CELLS + 1 + 6 + 1  # ours mark, name, space, peer id tail, space


@dataclass(frozen=True)
class MapRow:
    """One row of the map: a server, or ``count`` servers with the same blocks and state."""

    label: str  # exactly LABEL_CELLS - 1 cells
    cells: tuple[str, ...]  # one state per block ("ONLINE", ... or ABSENT)
    count: int = 1


def _label(mark: str, name: str, tail: str) -> str:
    return f"{mark}{set_cell_size(printable(name), NAME_CELLS)} {set_cell_size(tail, 6)}"


def map_rows(snap: SwarmSnapshot, own: frozenset[str] = frozenset(), max_rows: int = 40) -> list[MapRow]:
    """The rows in start-block order; servers grouped by (blocks, state) when there are more than
    ``max_rows``."""
    cells: dict[str, list[str]] = {s.peer_id: [ABSENT] * snap.num_blocks for s in snap.servers}
    for block in snap.blocks:
        for peer_id, state in block.servers.items():
            shown = "UNREACHABLE" if peer_id in block.unreachable else state  # ONLINE, but did not answer
            cells.setdefault(peer_id, [ABSENT] * snap.num_blocks)[block.index] = shown
    servers = sorted(snap.servers, key=lambda s: (s.start_block, s.end_block, s.peer_id))
    if len(servers) <= max_rows:
        return [MapRow(_label("*" if s.peer_id in own else " ", s.public_name or "", s.peer_id[-6:]),
                       tuple(cells[s.peer_id])) for s in servers]
    groups: dict[tuple[str, ...], list[str]] = {}
    for s in servers:
        groups.setdefault(tuple(cells[s.peer_id]), []).append(s.peer_id)
    return [MapRow(_label("*" if own & set(peers) else " ", f"×{len(peers)} servers", ""), key, len(peers))
            for key, peers in groups.items()]


class BlockMap:
    """A rich renderable of one snapshot (see the module docstring); build it with :func:`block_map`."""

    def __init__(self, snap: SwarmSnapshot, rows: list[MapRow], max_rows: int):
        self.snap, self.rows, self.max_rows = snap, rows, max_rows

    def bands(self, width: int) -> list[range]:
        """Block ranges of whole groups that fit ``width`` columns (at least one group per band)."""
        groups = max(1, (width - LABEL_CELLS) // (GROUP + 1))
        per_band = groups * GROUP
        return [range(b, min(b + per_band, self.snap.num_blocks))
                for b in range(0, self.snap.num_blocks, per_band)]

    def _cells_line(self, label: Text, band: range, cell) -> Text:
        line = label.copy()
        line.append(" ")
        for b in band:
            if b > band.start and b % GROUP == 0:
                line.append(" ")
            line.append(*cell(b))
        return line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        snap, online = self.snap, self.snap.online_per_block
        shown = self.rows[:self.max_rows]
        for i, band in enumerate(self.bands(options.max_width)):
            if i:
                yield Text("")
            head = Text(" " * LABEL_CELLS)
            for b in band:
                if b % GROUP == 0:
                    head.append(f"{b:<{GROUP + 1}}"[:min(GROUP, band.stop - b) + 1], style="bold")
            yield head.rstrip() or head

            def coverage(b):
                n = online[b]
                return (UNCOVERED, "bold white on red") if n == 0 else ("+" if n > 9 else str(n), "green")

            yield self._cells_line(Text(set_cell_size("ONLINE/block", LABEL_CELLS - 1), style="bold"), band,
                                   coverage)
            for row in shown:
                if not any(row.cells[b] != ABSENT for b in band):
                    continue  # a wrapped band lists only the rows that hold some of its blocks
                label = Text(row.label, style="bold" if row.label.startswith("*") else "")
                yield self._cells_line(label, band, lambda b, row=row: (
                    GLYPH.get(row.cells[b], ABSENT),
                    STYLE.get(row.cells[b], "red" if online[b] == 0 else STYLE[ABSENT])))
        if len(self.rows) > len(shown):
            yield Text(f"… {len(self.rows) - len(shown)} more rows: see the servers table or -o json",
                       style="yellow")
        unreachable = (f"  {GLYPH['UNREACHABLE']} unreachable (ONLINE in the DHT)"
                       if snap.unreachable_servers else "")
        yield Text(f"{GLYPH['ONLINE']} ONLINE  {GLYPH['JOINING']} JOINING  {GLYPH['OFFLINE']} OFFLINE  "
                   f"{ABSENT} not held  * ours{unreachable}", style="bright_black")
        if snap.uncovered_blocks:
            yield Text(f"{UNCOVERED} no ONLINE server: blocks {format_block_ranges(snap.uncovered_blocks)}",
                       style="bold red")
        elif not snap.blocks:  # nothing to serve is not "every block served"
            yield Text("no blocks: the model's block count is 0 or unknown", style="bold red")
        else:
            yield Text("every block has an ONLINE server", style="green")


def block_map(snap: SwarmSnapshot, own: set[str] | frozenset[str] = frozenset(), *,
              max_rows: int = 40) -> BlockMap:
    """The block map of ``snap`` (pure); ``own``: peer ids of our servers (marked ``*``)."""
    return BlockMap(snap, map_rows(snap, frozenset(own), max_rows), max_rows)
