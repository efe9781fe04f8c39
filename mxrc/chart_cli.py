"""``mxrc chart``: show, check and draw the statechart definitions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mxrc.diagram import render, to_dot
from mxrc.errors import MxrcError, UsageError
from mxrc.statechart import Chart, default_registry, load_chart_file

FORMATS = ("svg", "png", "pdf", "dot")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "chart",
        help="show, check or draw a statechart",
        description="Inspect the statechart definitions in statecharts/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  mxrc chart show                     # states, transitions, guards of rt\n"
        "  mxrc chart draw --state RUNNING -o rt.svg\n"
        "  mxrc chart check my-chart.toml      # validate a chart file\n",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print a chart's states and transitions")
    show.add_argument("name", nargs="?", default="rt", help="chart name (default rt)")
    show.set_defaults(func=_show)
    check = actions.add_parser("check", help="validate a chart file (exit 7 if invalid)")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check)
    draw = actions.add_parser("draw", help="draw a chart with Graphviz")
    draw.add_argument("name", nargs="?", default="rt", help="chart name (default rt)")
    draw.add_argument("--file", type=Path, help="draw this chart file instead of a named chart")
    draw.add_argument("--state", help="highlight this state as the current one")
    draw.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="output file; its suffix picks the format (svg, png, pdf, dot); "
        "default: SVG on standard output",
    )
    draw.set_defaults(func=_draw)


def _chart(args: argparse.Namespace) -> Chart:
    if getattr(args, "file", None) is not None:
        return load_chart_file(args.file)
    return default_registry().get(args.name)


def _show(args: argparse.Namespace) -> int:
    chart = _chart(args)
    print(f"{chart.ref}  (initial {chart.initial})")
    for state in chart.states:
        drives = "  [drives outputs]" if state in chart.driving_states else ""
        print(f"  {state:<10} {chart.descriptions.get(state, '')}{drives}")
    print("transitions:")
    for t in chart.transitions:
        guards = f"  guards: {', '.join(t.guards)}" if t.guards else ""
        cause = "  (requires a cause)" if t.requires_cause else ""
        print(f"  {t.trigger:<12} {', '.join(t.sources)} → {t.dest}{guards}{cause}")
    print("guards:")
    for name, text in chart.guards.items():
        print(f"  {name:<14} {text}")
    return 0


def _check(args: argparse.Namespace) -> int:
    chart = load_chart_file(args.file)
    print(
        f"{args.file}: valid chart {chart.ref} ({len(chart.states)} states, "
        f"{len(chart.transitions)} transitions)"
    )
    return 0


def _draw(args: argparse.Namespace) -> int:
    chart = _chart(args)
    if args.state is not None and args.state not in chart.states:
        raise UsageError(
            f"--state {args.state!r} is not a state of {chart.ref}; "
            f"states: {', '.join(chart.states)}"
        )
    fmt = args.output.suffix.lstrip(".").lower() if args.output else "svg"
    if fmt not in FORMATS:
        raise UsageError(
            f"--output {args.output}: unsupported suffix; use one of "
            f"{', '.join('.' + f for f in FORMATS)}"
        )
    try:
        data = (
            to_dot(chart, args.state).encode() if fmt == "dot" else render(chart, fmt, args.state)
        )
    except RuntimeError as exc:
        raise MxrcError(str(exc)) from None
    if args.output is None:
        sys.stdout.buffer.write(data)
    else:
        args.output.write_bytes(data)
        print(f"wrote {args.output} ({len(data)} bytes)", file=sys.stderr)
    return 0
