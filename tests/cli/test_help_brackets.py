"""Square brackets in help text survive rich's markup (``[train]`` would otherwise be read as a tag and dropped)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mot.cli.main import app


@pytest.mark.parametrize(("args", "shown"), [
    (["eval", "train-router", "--help"], ["BENCH=PATH[@SPLIT]", "test[train]"]),
    (["eval", "harness", "--help"], ["mot[harness]"]),
])
def test_bracketed_help_text_is_shown(args, shown):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for text in shown:
        assert text in flat
