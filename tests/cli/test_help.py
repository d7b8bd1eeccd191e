"""Help texts and usage errors of ``wsctl`` and ``wsnode`` (issue 16, item 8)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from tests.cli.conftest import Wsctl
from wsctl.cli import app as wsctl_app
from wsnode.cli import app as wsnode_app
from wsnode.clihelp import close_options

WIDE = {"COLUMNS": "200", "TERM": "dumb"}


def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of a click group, with the words that name it."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


WSCTL = sorted(commands(typer.main.get_command(wsctl_app)), key=lambda c: c[0])


def help_of(app: Any, *words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("words", [(), *(w for w, _ in WSCTL), ("presence",), ("pods",),
                                   ("dlq",)], ids=lambda w: " ".join(w) or "wsctl")
def test_wsctl_flags_show_no_type(words: tuple[str, ...]) -> None:
    text = help_of(wsctl_app, *words)
    assert "<bool>" not in text
    assert "{user}" not in text and "{pod}" not in text  # arguments are USER, POD, ID


@pytest.mark.parametrize("words", [(), ("serve",)], ids=["wsnode", "serve"])
def test_wsnode_flags_show_no_type(words: tuple[str, ...]) -> None:
    assert "<bool>" not in help_of(wsnode_app, *words)


@pytest.mark.parametrize(("words", "command"), WSCTL, ids=lambda w: " ".join(w)
                         if isinstance(w, tuple) else "")
def test_every_summary_is_one_whole_sentence(words: tuple[str, ...], command: Any) -> None:
    """The first paragraph of a docstring is the line in the command list."""
    summary = (command.help or "").strip().split("\n\n")[0]
    assert "\n" not in summary and summary.endswith("."), (words, summary)


def test_json_help_says_what_is_printed() -> None:
    for words in (("token",), ("swarm",), ("doctor",), ("version",)):
        text = help_of(wsctl_app, *words)
        line = next(line for line in text.splitlines() if "--json" in line)
        assert "admin API" not in line, (words, line)
    assert "the admin API's answer" in help_of(wsctl_app, "pods", "ls")


def test_arguments_have_one_naming_style() -> None:
    usages = {" ".join(w): help_of(wsctl_app, *w).split("Usage: ")[1].splitlines()[0].strip()
              for w in (("send",), ("presence", "get"), ("drain",), ("trace",), ("token",),
                        ("dlq", "retry"), ("publish",), ("topics", "get"))}
    assert usages["send"].endswith("{USER}...") and usages["token"].endswith("{USER}")
    assert usages["presence get"].endswith("{USER}") and usages["drain"].endswith("{POD}")
    assert usages["trace"].endswith("{ID}") and usages["dlq retry"].endswith("{ID}")
    assert usages["publish"].endswith("{TOPIC}") and usages["topics get"].endswith("{TOPIC}")


def test_an_unknown_option_suggests_only_a_close_spelling(wsctl: Wsctl) -> None:
    bogus = wsctl.run("pods", "ls", "--bogus")
    assert bogus.exit_code == 2 and "No such option: --bogus" in bogus.stderr
    assert "Possible options" not in bogus.stderr and "Did you mean" not in bogus.stderr
    typo = wsctl.run("send", "alice", "--type", "t", "--jsn")
    assert typo.exit_code == 2 and "--json" in typo.stderr
    serve = CliRunner().invoke(wsnode_app, ["serve", "--bogus"], env=WIDE)
    assert serve.exit_code == 2 and "--host" not in serve.stderr
    assert close_options("--hots", ["--host", "--port", "--help"]) == ["--host"]
    assert close_options("--bogus", ["--host", "--port", "--help"]) == []


def test_versions() -> None:
    for cmd in (["wsnode", "--version"], ["wsctl", "--version"], ["wsctl", "version"]):
        done = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        name, _, number = done.stdout.strip().partition(" ")
        assert name == cmd[0] and number and number[0].isdigit(), done.stdout


def test_serve_help_names_the_environment_and_env_file() -> None:
    text = help_of(wsnode_app, "serve")
    assert "WSNODE_" in text and ".env" in text
    assert "WSNODE_REDIS_URL" in text and "WSNODE_PORT" in text
