"""The ``tl-ray`` command line: parse, call the package, print.

Each command group is a module here that adds its subcommands to the parser. TensorFlow and Ray are
imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys

from tl_ray.cli import cluster, data, models, serve, sweep
from tl_ray.cli._common import fail, import_tensorflow_quietly
from tl_ray.errors import TLRayError
from tl_ray.tune.cluster import VERBOSE_ENV

GROUPS = (data, sweep, models, serve, cluster)
TRAINS_OR_SERVES = {"train", "tune", "run", "serve"}  # commands that import TensorFlow in this process

EXAMPLES = """examples:
  tl-ray run jobs/quickstart/target.yaml            # sweep, test, promote and serve (local Ray, local store)
  tl-ray submit jobs/quickstart/target.yaml --address http://HEAD:8265 --set storage=s3://bucket/tl-ray
  tl-ray models list --storage s3://bucket/tl-ray -o json
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless its text already says it) and keeps the examples' lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every parser and subparser of ``tl-ray`` shows defaults in its help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``tl-ray`` argument parser: each module of ``GROUPS`` adds its subcommands."""
    from tl_ray import __version__

    parser = _Parser(prog="tl-ray", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"tl-ray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray Tune's status tables and every trial's own output (TensorFlow, Ray) live")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``tl-ray`` command in ``argv`` (default ``sys.argv[1:]``); returns its exit code."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    # TensorFlow's C++ logs (oneDNN notes, a cuInit error on a machine without GPUs), in this process and the
    # Ray workers it starts; -v keeps its errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if args.verbose else "3")
    if args.command in TRAINS_OR_SERVES and not args.verbose:
        import_tensorflow_quietly()
    try:
        return args.func(args)
    except TLRayError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
