"""The ``sora`` command itself: argument errors, unexpected errors with and without ``--debug`` / ``SORA_DEBUG``, and
parsing without the heavy libraries (``import sora`` is lazy)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import sora
from sora import cli

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter (this checkout's ``sora`` first on the path)."""
    src = os.path.dirname(os.path.dirname(sora.__file__))
    environ = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    environ.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120, check=False
    )


def _train_argv(tmp_path) -> list[str]:
    return ["train", "--task", "rte", "--output-dir", str(tmp_path / "out")]


def _boom(*args, **kwargs):
    raise RuntimeError("boom in the train path\nits second line")


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


# --- unexpected errors: one line, or the traceback with --debug / SORA_DEBUG ----------------------------------


def test_an_unexpected_error_is_one_line_that_names_the_debug_switch(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr("sora.train.train", _boom)
    assert cli.main(_train_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("sora: error: RuntimeError: boom in the train path (sora --debug or SORA_DEBUG=1 shows")


@pytest.mark.parametrize("switch", ["env", "flag"])
def test_debug_raises_the_unexpected_error_itself(tmp_path, monkeypatch, capsys, switch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    argv = _train_argv(tmp_path)
    if switch == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    else:
        argv = ["--debug", *argv]
    monkeypatch.setattr("sora.train.train", _boom)
    with pytest.raises(RuntimeError, match="boom in the train path") as info:
        cli.main(argv)
    assert any(entry.name == "_boom" for entry in info.traceback)  # the frame that raised, kept
    assert "sora: error" not in capsys.readouterr().err


def test_debug_keeps_a_user_error_to_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.main(["--debug", *_train_argv(tmp_path), "--r", "0"]) == 2
    assert capsys.readouterr().err == "sora: error: r must be > 0, got 0\n"


BROKEN_COMMAND = """
import sys
from sora import cli

def broken(args):
    raise RuntimeError("an internal error")

cli._run = broken
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "env", "traceback"),
    [
        ([], {}, False),
        ([], {"SORA_DEBUG": "1"}, True),
        (["--debug"], {}, True),
        ([], {"SORA_DEBUG": "0"}, False),
    ],
    ids=["plain", "SORA_DEBUG=1", "--debug", "SORA_DEBUG=0"],
)
def test_the_process_shows_the_traceback_only_when_debugging(argv, env, traceback):
    code = BROKEN_COMMAND.replace("sys.argv[1:]", repr([*argv, "ranks", "some-run"]))
    result = _python(code, **env)
    assert result.returncode == 1
    if traceback:
        assert "Traceback (most recent call last)" in result.stderr
        assert 'sora/cli.py", line' in result.stderr and "in broken\n" in result.stderr  # every frame, to the raise
        assert result.stderr.strip().splitlines()[-1] == "RuntimeError: an internal error"
    else:
        assert "Traceback" not in result.stderr
        assert (
            result.stderr.startswith("sora: error: RuntimeError: an internal error (")
            and result.stderr.count("\n") == 1
        )


# --- parsing without torch ------------------------------------------------------------------------------------


COMMAND = """
import sys
from sora import cli
try:
    status = cli.main(ARGV)
except SystemExit as e:  # --help
    status = e.code
print("imported:", *(m for m in HEAVY if m in sys.modules), file=sys.stderr)
sys.exit(status)
"""


@pytest.mark.parametrize(
    ("argv", "status", "stdout", "stderr"),
    [
        (["--help"], 0, "usage: sora [-h] [--debug]", ""),
        (["train", "--help"], 0, "usage: sora train [-h] --task TASK", ""),
        (["schedule", "--help"], 0, "usage: sora schedule [-h] --task TASK", ""),
        (["train", "--task", "rte", "--output-dir", "x", "--bogus"], 2, "", "sora: error: unrecognized arguments"),
        (["train", "--task", "rte", "--output-dir", "x", "--r", "0"], 2, "", "sora: error: r must be > 0, got 0"),
    ],
    ids=["help", "train-help", "schedule-help", "unknown-option", "bad-value"],
)
def test_help_and_argument_errors_import_no_heavy_library(argv, status, stdout, stderr):
    result = _python(COMMAND.replace("ARGV", repr(argv)).replace("HEAVY", repr(HEAVY)))
    assert result.returncode == status, result.stderr
    assert result.stdout.startswith(stdout)
    *lines, imported = result.stderr.splitlines()
    assert imported == "imported:", f"torch & co. imported to answer {argv}: {imported}"
    assert "\n".join(lines).startswith(stderr) and len(lines) == (1 if stderr else 0), lines


# --- the lazy package -----------------------------------------------------------------------------------------


def test_import_sora_is_lazy_and_dir_lists_every_public_name():
    result = _python(
        "import sys, sora; names = dir(sora); print(all(n in names for n in sora.__all__), "
        f"[m for m in {HEAVY} if m in sys.modules])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True []"


def test_every_public_name_resolves_to_its_definition():
    aliases = {"BudgetCallback": "SoraCallback"}  # its earlier name, kept public
    for name in sora.__all__:
        value = getattr(sora, name)
        assert value.__name__ == aliases.get(name, name), name
        assert value is getattr(importlib.import_module(value.__module__), name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        sora.no_such_name  # noqa: B018


def test_the_submodule_sora_prune_does_not_hide_the_function(monkeypatch):
    loaded = importlib.import_module("sora.prune")
    monkeypatch.delitem(sys.modules, "sora.prune")  # as in a fresh interpreter: sora.prune not imported yet
    monkeypatch.delitem(vars(sora), "prune", raising=False)
    fresh = importlib.import_module("sora.prune")  # the import system binds the submodule on the package
    assert fresh is not loaded and callable(sora.prune) and sora.prune is fresh.prune
