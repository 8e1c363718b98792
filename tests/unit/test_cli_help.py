"""`dra-operator <command> --help` explains every option of every subcommand."""

from __future__ import annotations

import argparse
import importlib

import pytest

from dra_operator.cli import SUBCOMMANDS


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_option_has_help(command: str) -> None:
    parser = argparse.ArgumentParser(prog=f"dra-operator {command}")
    importlib.import_module(SUBCOMMANDS[command][0]).add_arguments(parser)
    undocumented = [
        action.option_strings or [action.dest]
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert undocumented == []
