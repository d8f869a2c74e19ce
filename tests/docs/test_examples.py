"""Every command line shown in the README and docs/ parses and validates.

Its flags exist and its values are accepted by the command's config. Running them would need the hub
or finished run folders; the commands themselves run end to end in the CLI tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from confidence_neurons import cli
from confidence_neurons.commands import flags as F

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples() -> list[tuple[str, str]]:
    """(page:line, command line) for every `confidence-neurons ...` line inside a fenced block."""
    found = []
    for page in PAGES:
        fenced = False
        for i, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
                continue
            if fenced and line.startswith("confidence-neurons "):
                found.append((f"{page.relative_to(ROOT)}:{i}", re.sub(r"\s+#.*$", "", line)))
    return found


EXAMPLES = _examples()


def test_the_pages_show_every_command():
    shown = {shlex.split(cmd)[1] for _, cmd in EXAMPLES}
    assert shown >= set(cli.COMMANDS) | {"rerun"}, f"no example of {set(cli.COMMANDS) - shown}"


@pytest.mark.parametrize(("where", "command"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_parses_and_validates(where, command):
    parser, _ = cli.build_parser()
    argv = shlex.split(command)[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse refused it (or --version / --help printed and left)
        if exc.code == 0:
            return
        pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")
    if args.command == "rerun":
        return
    # The settings as the command would build them (the --config file itself is a run folder's, not read here).
    F.options_from_args(cli.COMMANDS[args.command].config, args, None)
