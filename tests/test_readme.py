"""The README is the user's reference: it must document every config field and CLI command that exists."""
import dataclasses
import typing
from pathlib import Path

from pipeline import config
from pipeline.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _fields(cls, prefix):
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _fields(hint, f"{f.name}.")
        elif f.name != "inputs":
            yield prefix + f.name


def test_every_config_field_is_documented():
    names = list(_fields(config.Config, "")) + [f"inputs[].{f.name}" for f in dataclasses.fields(config.InputSource)]
    missing = [n for n in names if f"`{n}`" not in README]
    assert not missing, f"README's config table lacks: {missing}"


def test_every_cli_command_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    missing = [name for name in sub.choices if f"`xdp {name}" not in README]
    assert not missing, f"README's command table lacks: {missing}"
