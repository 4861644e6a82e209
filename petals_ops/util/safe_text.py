"""Untrusted text made inert before it reaches a terminal or a text file.

Anything a remote peer announces (a server's ``public_name``, version, adapters, addresses), anything a
remote host prints, and any text a model generated is untrusted: an ESC sequence in it would drive the
user's terminal, and ``[link=...]`` would become rich markup. Every place that shows such text uses
:func:`printable` (plain output) or :func:`inert` (a string that rich will print) from here, so the rule
lives in one place.
"""

from __future__ import annotations

import unicodedata

# Unicode categories that print nothing visible or steer the terminal: controls (ESC, CR, BEL, the C1
# range), format characters (bidi overrides, zero-width joiners), surrogates, private use, line and
# paragraph separators.
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
REPLACEMENT = "?"


def printable(text: object, *, limit: int | None = None, keep_newlines: bool = False) -> str:
    """``text`` with each control or invisible character replaced by ``?`` (newlines and tabs kept
    when ``keep_newlines``), cut to ``limit`` characters with ``…``. ``None`` gives ``""``."""
    if text is None:
        return ""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:max(0, limit - 1)] + "…"
    if text.isprintable():  # the common case: nothing to replace
        return text
    return "".join(
        ch if (keep_newlines and ch in "\n\t") or unicodedata.category(ch) not in _HIDDEN else REPLACEMENT
        for ch in text
    )


def inert(text: object, *, limit: int | None = None, keep_newlines: bool = False) -> str:
    """:func:`printable`, with rich markup escaped: for strings given to a rich console or table."""
    from rich.markup import escape

    return escape(printable(text, limit=limit, keep_newlines=keep_newlines))


def inert_text(text: object, *, limit: int | None = None, keep_newlines: bool = False):
    """A ``rich.text.Text`` of :func:`printable` text: rich applies neither markup nor emoji codes to it."""
    from rich.text import Text

    return Text(printable(text, limit=limit, keep_newlines=keep_newlines))
