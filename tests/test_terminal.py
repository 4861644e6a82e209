"""The CLI's terminal object: tables, JSON, progress (a rich bar on a TTY, plain lines elsewhere), errors."""

import io
import json

from petals_ops.cli.terminal import Terminal
from petals_ops.util.errors import EXIT_PARTIAL, InputError, PartialFailure, one_line


def make(tty=None):
    out, err = io.StringIO(), io.StringIO()
    return Terminal(out, err, force_terminal=tty), out, err


def test_table_json_and_lines_go_to_their_streams():
    term, out, err = make()
    term.table(["host", "state"], [["a", None], ["b", "ONLINE"]], title="servers")
    term.json({"b": 1, "a": [1]})
    term.echo("token hf_" + "a" * 34 + " done")
    term.info("waiting")
    text = out.getvalue()
    assert "servers" in text and "ONLINE" in text and "None" not in text
    assert json.loads(text[text.index("{"):text.index("}") + 1]) == {"a": [1], "b": 1}
    assert "token hf_*** done" in text and "hf_aaaa" not in text
    assert err.getvalue() == "waiting\n"


def test_progress_off_a_terminal_prints_lines_when_done_moves():
    term, out, err = make(tty=False)
    with term.progress("blocks served", fields=("loss",)) as bar:
        for done in (0, 0, 1, 1, 2):
            bar.update(done, 2, loss=f"{done / 10:.1f}")
    assert err.getvalue().splitlines() == ["blocks served: 0/2, loss 0.0", "blocks served: 1/2, loss 0.1",
                                           "blocks served: 2/2, loss 0.2"]
    assert out.getvalue() == ""


def test_progress_every_and_the_callers_own_line():
    term, _, err = make(tty=False)
    with term.progress("training", total=120, every=50) as bar:
        for step in range(1, 121):
            bar.update(step, line=f"[{step}/120]")
    assert err.getvalue().splitlines() == ["[1/120]", "[50/120]", "[100/120]", "[120/120]"]


def test_progress_on_a_terminal_is_a_rich_bar_with_the_fields():
    term, _, err = make(tty=True)
    with term.progress("tune", fields=("loss", "tok/s"), total=4) as bar:
        bar.update(3, loss="0.250", **{"tok/s": "12"})
    shown = err.getvalue()
    assert "tune" in shown and "3/4" in shown and "loss 0.250" in shown and "tok/s 12" in shown
    assert "tune: 3/4" not in shown  # the bar, not the plain line


def test_fail_prints_one_redacted_line_and_returns_the_exit_code():
    term, out, err = make()
    assert term.fail(InputError("bad token hf_" + "b" * 34, fix="pass another")) == 2
    assert term.fail(PartialFailure("2 of 3 hosts")) == EXIT_PARTIAL
    assert err.getvalue().splitlines() == ["error: bad token hf_***; pass another", "error: 2 of 3 hosts"]
    assert out.getvalue() == ""


def test_one_line_squashes_cuts_redacts_and_names_empty_errors():
    token = "hf_" + "c" * 34
    assert one_line(ValueError(f"line one\n\tline  two {token}")) == "line one line two hf_***"
    assert one_line(RuntimeError("x" * 50 + " cause"), 10, tail=True) == "xxxx cause"
    assert one_line(OSError("abcdef"), 3) == "abc"
    assert one_line(f"{token[:12]}{token[12:]} end", 5) == "hf_**"  # redacted before the cut: no part leaks
    assert one_line(TimeoutError()) == "TimeoutError" and one_line("") == ""
    assert one_line("bell\x07 escape\x1b[31m") == "bell? escape?[31m"
    assert InputError("bad\n value", fix="fix  it").one_line() == one_line("bad value; fix it")
