"""The ``sora`` command itself: argument errors."""

from __future__ import annotations

import pytest

from sora import cli

# --- argument errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--task", "rte", "--output-dir", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--task", "rte"], "the following arguments are required: --output-dir"),
        (["ranks"], "the following arguments are required: run_dir"),
        ([], "the following arguments are required: command"),
    ],
    ids=["unknown-option", "train-missing-option", "ranks-missing-folder", "no-command"],
)
def test_an_argument_error_is_one_line_with_one_prefix(capsys, argv, message):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"sora: error: {message}\n"
