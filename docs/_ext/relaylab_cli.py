"""A tiny Sphinx extension: the `relaylab` command line reference, generated from its argparse parser.

``.. relaylab-cli::`` renders `relaylab --help` and then, per command in the parser's order, a section titled
``relaylab COMMAND`` with the command's one-line summary and its full ``--help`` text. `relaylab.cli.parser()` loads
only argparse and the standard library, so this costs nothing; the page can never disagree with the program.
"""

from __future__ import annotations

import argparse
import os

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

WIDTH = "100"  # argparse wraps help to $COLUMNS; fixed, so the page does not depend on the terminal it was built in


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, summary, parser) of each sub-command, in the order `relaylab --help` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return [(name, summaries.get(name, ""), sub) for name, sub in action.choices.items()]


class RelaylabCli(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from relaylab.cli import parser as build_parser

        previous = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = WIDTH
        try:
            top = build_parser()
            lines = [".. code-block:: text", ""] + ["   " + line for line in top.format_help().splitlines()] + [""]
            for name, summary, sub in subcommands(top):
                title = f"relaylab {name}"
                lines += [f".. _cli-{name}:", "", title, "-" * len(title), ""]
                if summary:
                    lines += [summary[0].upper() + summary[1:] + ".", ""]
                lines += [".. code-block:: text", ""] + ["   " + line for line in sub.format_help().splitlines()] + [""]
        finally:
            if previous is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = previous
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="relaylab.cli.parser()"), container)
        return container.children


def setup(app):
    app.add_directive("relaylab-cli", RelaylabCli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
