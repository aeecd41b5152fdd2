"""The ``neurojepa`` command line: thin wrappers over library functions, one subcommand per pipeline step.

Expected problems (:class:`~neurojepa.errors.InputError`) print one line and exit with code 2; ``-v`` turns on
logging (``-vv`` for debug).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import EXIT_INPUT_ERROR, InputError

log = logging.getLogger("neurojepa")


# --------------------------------------------------------------------------------------------- subcommands
# Each subcommand is a pair: `_add_<name>(subparsers)` declares its arguments and sets `func=_run_<name>`.
# Imports of heavy modules stay inside `_run_*` so that `neurojepa --help` is instant.


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write a simulated VBN-like session with known ground truth to NWB")
    p.add_argument("--out", required=True, help="output .nwb file")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--units", type=int, default=None, help="number of units (default: preset's)")
    p.add_argument("--minutes", type=float, default=None, help="minutes per task block (default: preset's)")
    p.add_argument("--preset", choices=["default", "vbn"], default="default",
                   help="'default': ~400 units, two ~15 min blocks; 'vbn': full size, ~2,000 units, ~2.5 h")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from .data.simulate import simulate_to_nwb

    path = simulate_to_nwb(args.out, seed=args.seed, n_units=args.units, minutes=args.minutes, preset=args.preset)
    print(f"wrote {path}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="one-screen summary of a recording (NWB)")
    p.add_argument("file", help="an NWB file")
    p.add_argument("--states-from", default=None, metavar="TABLE[:COLUMN]",
                   help="take brain states from this intervals table (and column) of a non-VBN file")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    from .data.inspect import print_summary
    from .data.nwb_read import open_session

    print_summary(open_session(args.file, states_from=args.states_from))
    return 0


COMMANDS = [_add_simulate, _add_inspect]


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurojepa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"neurojepa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"neurojepa: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("neurojepa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
