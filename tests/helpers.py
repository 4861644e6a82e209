"""Assertions shared by the test modules."""


def assert_one_line_error(result, *needles, code=None) -> str:
    """Exactly one ``error: ...`` line, the last on stderr (a third-party log line may precede it), no
    traceback, a non-zero exit (``code`` if given), and every needle in that line; returns the line."""
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]
