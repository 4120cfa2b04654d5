"""The `xdp` command line: one subcommand per stage, `xdp run` for the whole job.

Each package registers its own subcommands (`register(subparsers)`) so this file stays a switchboard;
heavy imports happen inside the command functions, keeping `xdp --help` instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.config import ConfigError
from tokenizer_training.memory import raise_malloc_arena_limit

COMMAND_MODULES = (
    "pipeline.commands",
    "pipeline.langid_cli",
    "pipeline.dedup_cli",
    "tokenizer_training.cli",
    "mixing.cli",
    "model.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdp",
        description="Data preparation for multilingual LLM pretraining (the XVERSE-65B recipe) on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(_parser=command_parser)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """As `parse_args`, but an unknown option is reported with its command's usage, not `xdp`'s."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def raised(exc: BaseException) -> BaseException:
    """What the code raised: a Ray task's exception re-raised in the driver is also an instance of the
    original class, but its message carries Ray's header and the remote traceback."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def main(argv: list[str] | None = None) -> int:
    raise_malloc_arena_limit()  # before Ray or any trainer starts a thread
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"xdp: config error: {raised(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing or unreadable file, a full disk: say which, no traceback
        if args.verbose:
            raise
        exc = raised(exc)
        print(f"xdp: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except Exception as exc:
        shards = sys.modules.get("mixing.shards")  # imported by whatever could raise its ShardError
        if shards is not None and isinstance(exc, shards.ShardError) and not args.verbose:
            print(f"xdp: {raised(exc)}", file=sys.stderr)
            return 2
        if args.verbose or "ray" not in sys.modules:
            raise
        from pipeline.ray_session import lost_resources

        if not lost_resources(exc):
            raise
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(f"xdp: the Ray cluster lost a node or worker and the step could not finish ({type(exc).__name__}: "
              f"{first[:300]}). Completed steps and intermediate results are kept: rerun the same command to "
              f"resume.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("xdp: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        terminated = getattr(sys.modules.get("pipeline.ray_session"), "Terminated", None)
        if terminated is None or not isinstance(exc, terminated):
            raise
        print("xdp: terminated (SIGTERM); completed steps are kept: rerun the same command to resume",
              file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
