"""Helpers shared by the CLI tests."""


def one_line_error(result):
    """Assert a click result failed with exactly one 'Error' line and no traceback; return that line."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]
