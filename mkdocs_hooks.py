"""MkDocs hook: the CLI reference is written from `build_parser()` at build time, so
the page cannot fall behind the command line (tests/test_site.py checks it)."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"
WIDTH = "88"


def cli_reference() -> str:
    """Markdown: the top-level help, then each subcommand's help, in parser order."""
    from sbi_plugins.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal: pin it
    try:
        parser = build_parser()
        (commands,) = (
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        )
        helps = {c.dest: c.help for c in commands._choices_actions}
        parts = ["```text", parser.format_help().rstrip(), "```"]
        for name, sub in commands.choices.items():
            parts += [
                f"## sbi-plugins {name}",
                "",
                f"{helps.get(name) or ''}",
                "",
                "```text",
                sub.format_help().rstrip(),
                "```",
                "",
            ]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the marker on the CLI page with the generated reference."""
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
