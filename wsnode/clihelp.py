"""Help output and option errors shared by the ``wsnode`` and ``wsctl`` CLIs.

Two defaults of typer and click read badly, and :class:`Command` and
:class:`Group` (pass them as ``cls=``) change them:

* typer's rich help prints a type beside every flag (``--json <bool>``): a
  flag takes no value, so it shows none;
* click suggests any option within difflib's loose 0.6 similarity, so
  ``--bogus`` gets "Possible options: --host": only a close spelling of a real
  option (``--hots``, ``--jsn``) is suggested now.
"""

from __future__ import annotations

import difflib
from typing import Any

import typer.core

SUGGEST_CUTOFF = 0.75


def close_options(given: str, known: list[str]) -> list[str]:
    """The options of ``known`` that ``given`` is plausibly a misspelling of."""
    bare = {k.lstrip("-"): k for k in known}
    found = difflib.get_close_matches(given.lstrip("-"), list(bare), n=3, cutoff=SUGGEST_CUTOFF)
    return [bare[name] for name in found]


class _Fixes:
    """Mixed into typer's command and group classes (see the module docstring).

    Duck-typed on purpose: typer 0.2x carries its own copy of click, older ones
    use click itself, and the classes differ between the two.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
            if flag and param.metavar is None:
                param.metavar = ""  # typer prints the metavar, when set, instead of a type
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            rest: list[str] = super().parse_args(ctx, args)  # type: ignore[misc]
        except Exception as exc:  # click's NoSuchOption, whichever click it is
            given, near = getattr(exc, "option_name", None), getattr(exc, "possibilities", None)
            if isinstance(given, str) and near:
                exc.possibilities = close_options(given, list(near))  # type: ignore[attr-defined]
            raise
        return rest


class Command(_Fixes, typer.core.TyperCommand):
    """A typer command with the fixes of this module."""


class Group(_Fixes, typer.core.TyperGroup):
    """A typer group (an app with subcommands) with the fixes of this module."""


def installed_version() -> str:
    """The version of the installed ``wsnode`` distribution (``unknown`` in a
    source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsnode")
    except PackageNotFoundError:
        return "unknown"
