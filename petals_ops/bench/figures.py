"""Figures a method reports about a run, described well enough to be shown without knowing the method.

A method declares its figures (:class:`FigureSpec`: a key, a label, a kind, where it is shown) and computes
their values from the records; the summary stores both (``summary.json``: each value under its key, the
specs under ``figures``), and the terminal line, the table, ``report.md``, the plot and ``bench report``
render every figure by its spec, so a new method's figures never touch the reporters.

Kinds: ``rate`` (a share in [0, 1], shown as a percentage), ``number`` (shown with two decimals) and
``curve`` (accuracy against a number of paths: ``{"1": 0.52, "2": 0.55, ...}``, read in the order of k;
drawn on the run's plot, its first and last points in the table, its last point on the one-line result).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("rate", "number", "curve")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(x: float | None) -> str:
    """A share as a percentage; "n/a" when there is none (None, or NaN/inf from a hand-edited summary)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


@dataclass(frozen=True)
class FigureSpec:
    key: str  # its key in summary.json (unique among the figures of every method)
    label: str  # how a reader sees it: 'agreement with the vote'
    kind: str = "rate"
    column: str = ""  # its column header in the runs table ("" keeps it out; a curve: any text puts its
    # first and last points in, headed by ``point``)
    brief: bool = False  # shown on the run's one-line result (``bench gsm8k``)
    note: str = ""  # its definition, written once at the top of report.md
    point: str = "{x}"  # a curve: how one of its points is named ('maj@{x}'; plain text, not a format)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"figure {self.key}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def fits(self, value: Any) -> bool:
        """Whether ``value`` (read from a summary.json) is a value of this figure (None: not measured)."""
        if value is None:
            return True
        if self.kind == "curve":
            return isinstance(value, dict) and all(
                isinstance(k, str) and k.isdigit() and _is_number(v) for k, v in value.items())
        return _is_number(value)

    @staticmethod
    def points(value: Any) -> list[tuple[int, float]]:
        """A curve's points in the order of x (summary.json sorts its keys as strings: 1, 10, 2...)."""
        return sorted((int(x), v) for x, v in (value or {}).items() if x.isascii() and x.isdigit())

    def text(self, value: Any) -> str:
        """The whole value, for report.md."""
        if self.kind == "curve":
            points = self.points(value)
            return ", ".join(f"{self.name_point(str(x))} {pct(v)}" for x, v in points) if points else "n/a"
        if self.kind == "rate":
            return pct(value)
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"

    def headers(self) -> list[str]:
        """Its columns in the runs table (a curve: its first and last points, 'maj@1', 'maj@K')."""
        if not self.column:
            return []
        return [self.name_point("1"), self.name_point("K")] if self.kind == "curve" else [self.column]

    def cells(self, value: Any) -> list[str]:
        """Its cells in the runs table, one per header."""
        if self.kind == "curve":
            points = self.points(value)
            return [pct(points[0][1]), pct(points[-1][1])] if points else ["n/a", "n/a"]
        return [self.text(value)]

    def short(self, value: Any) -> str:
        """'label value' for the one-line result (a curve: its last point, named)."""
        if self.kind == "curve":
            points = self.points(value)
            if not points:
                return f"{self.label} n/a"
            return f"{self.name_point(str(points[-1][0]))} {pct(points[-1][1])}"
        return f"{self.label} {self.text(value)}"

    def name_point(self, x: str) -> str:
        return self.point.replace("{x}", x)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> FigureSpec:
        """ValueError unless ``data`` describes a figure (summary.json's ``figures`` entries)."""
        if not isinstance(data, dict) or not isinstance(data.get("key"), str) \
                or not isinstance(data.get("label"), str):
            raise ValueError("a figure needs a key and a label")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if not all(isinstance(v, bool if k == "brief" else str) for k, v in known.items()):
            raise ValueError(f"figure {data['key']} has a field of the wrong type")
        return cls(**known)


@dataclass(frozen=True)
class Figure:
    """A figure's value in one run."""

    spec: FigureSpec
    value: Any  # float, {k: float} for a curve, or None (not measured)

    @property
    def key(self) -> str:
        return self.spec.key


_DECLARED: dict[str, FigureSpec] = {}


def declare(spec: FigureSpec, owner: str) -> None:
    """Make ``spec`` known by its key (methods.register does, for each figure of a method): how a summary
    written before summaries described their figures is read. One key, one description."""
    known = _DECLARED.get(spec.key)
    if known is not None and known != spec:
        raise ValueError(f"method {owner}: figure key {spec.key!r} is taken by another figure")
    _DECLARED[spec.key] = spec


def declared() -> dict[str, FigureSpec]:
    """Every declared figure by key."""
    return dict(_DECLARED)
