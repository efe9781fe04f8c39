"""The incident timeline as SVG (or a self-contained HTML page): pure string building.

The picture is meant to be pasted into an incident report, so it carries its own
legend and UTC axis and needs nothing else to be read: one lane per node, the chart
state as coloured bands, and marks for faults, commands, rejected commands, restarts
and clean stops. Every mark has a ``<title>`` (the hover text in a browser) with the
record's time, sequence number and summary, so the picture can be traced to the log.
Two nodes RUNNING at the same time (:func:`mxrc.replay.find_overlaps`) are shaded
across all lanes: that is the finding a reader must not miss.

No dependency beyond the standard library: the output is text, and the structure
(classes, ``data-*`` attributes) is stable so tests can parse it as XML.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from mxrc.replay import (
    NS_PER_MS,
    NS_PER_S,
    Band,
    Downtime,
    Marker,
    Overlap,
    Timeline,
    format_duration,
    format_time,
)

STATE_COLOURS = {
    "INIT": "#9ca3af",
    "READY": "#2563eb",
    "RUNNING": "#16a34a",
    "SAFE_MODE": "#dc2626",
}
UNKNOWN_COLOUR = "#d6d3d1"
_LIGHT_FILLS = {STATE_COLOURS["INIT"], UNKNOWN_COLOUR}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
INK = "#0f172a"
MUTED = "#64748b"
GRID = "#e2e8f0"

LEFT = 130
RIGHT = 36
TOP = 74
LANE = 58
BAND_OFFSET = 20
BAND_HEIGHT = 22
CHAR_PX = 6.6  # average glyph width at 11 px: enough to decide whether a label fits
MARKER_KINDS = ("fault", "command", "rejected", "restart", "stopped")
MARKER_LABELS = {
    "fault": "fault",
    "command": "command / transition",
    "rejected": "rejected command",
    "restart": "process start",
    "stopped": "clean stop",
}

_MINUTE = 60 * NS_PER_S
_HOUR = 60 * _MINUTE
TICK_STEPS = tuple(
    [m * NS_PER_MS for m in (1, 2, 5, 10, 20, 50, 100, 200, 500)]
    + [s * NS_PER_S for s in (1, 2, 5, 10, 15, 30)]
    + [m * _MINUTE for m in (1, 2, 5, 10, 15, 30)]
    + [h * _HOUR for h in (1, 2, 3, 6, 12, 24)]
)


def colour_of(state: str) -> str:
    return STATE_COLOURS.get(state, UNKNOWN_COLOUR)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- axis


@dataclass(frozen=True)
class Tick:
    wall_ns: int
    label: str
    date: str | None  # shown under the label where the UTC date changes


def tick_step(span_ns: int, max_ticks: int) -> int:
    """The smallest round step that keeps the labels from crowding."""
    for step in TICK_STEPS:
        if span_ns / step <= max_ticks:
            return step
    return TICK_STEPS[-1] * (span_ns // (TICK_STEPS[-1] * max(max_ticks, 1)) + 1)


def _tick_label(wall_ns: int, step: int) -> str:
    moment = datetime.fromtimestamp(wall_ns // NS_PER_S, UTC)
    if step >= _MINUTE:
        return f"{moment:%H:%M}"
    if step >= NS_PER_S:
        return f"{moment:%H:%M:%S}"
    return f"{moment:%H:%M:%S}.{wall_ns % NS_PER_S // NS_PER_MS:03d}"


def axis_ticks(start_ns: int, end_ns: int, max_ticks: int = 10) -> list[Tick]:
    """Ticks on round UTC multiples of the step, labelled as precisely as the step needs;
    the date appears on the first tick and wherever it changes."""
    step = tick_step(max(end_ns - start_ns, 1), max_ticks)
    first = -(-start_ns // step) * step
    ticks: list[Tick] = []
    last_date: str | None = None
    for wall in range(first, end_ns + 1, step):
        day = f"{datetime.fromtimestamp(wall // NS_PER_S, UTC):%Y-%m-%d}"
        ticks.append(Tick(wall, _tick_label(wall, step), day if day != last_date else None))
        last_date = day
    return ticks


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _Frame:
    """Maps wall time to x; a zero-length window is widened so it still draws."""

    start_ns: int
    end_ns: int
    width: int

    @classmethod
    def of(cls, timeline: Timeline, width: int) -> _Frame:
        start, end = timeline.start_ns, timeline.end_ns
        if end <= start:
            start, end = start - NS_PER_S, end + NS_PER_S
        return cls(start, end, width)

    @property
    def plot_width(self) -> float:
        return float(self.width - LEFT - RIGHT)

    def x(self, wall_ns: int) -> float:
        return LEFT + (wall_ns - self.start_ns) / (self.end_ns - self.start_ns) * self.plot_width


def _lane_top(index: int) -> int:
    return TOP + index * LANE


def _title(text: str) -> str:
    return f"<title>{_esc(text)}</title>"


def _band(band: Band, frame: _Frame, lane: int) -> str:
    x0, x1 = frame.x(band.start_ns), frame.x(band.end_ns)
    y = _lane_top(lane) + BAND_OFFSET
    w = max(x1 - x0, 1.0)
    fill = colour_of(band.state)
    since = f" (since seq {band.seq})" if band.seq is not None else ""
    if band.tail:
        tip = (f"{band.node}: no records after {format_time(band.start_ns)}; last known state "
               f"{band.state}{since}")
    else:
        tip = (f"{band.node}: {band.state}{since} from {format_time(band.start_ns)} to "
               f"{format_time(band.end_ns)} ({format_duration(band.end_ns - band.start_ns)})")
    look = f'fill="{fill}"'
    if fill == UNKNOWN_COLOUR:
        look += ' stroke="#a8a29e" stroke-dasharray="3 2"'
    if band.tail:
        look += f' fill-opacity="0.3" stroke="{fill}" stroke-dasharray="4 3"'
    kind = "band tail" if band.tail else "band"
    parts = [f'<g class="{kind} state-{_esc(band.state)}" data-node="{_esc(band.node)}" '
             f'data-state="{_esc(band.state)}">', _title(tip),
             f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{BAND_HEIGHT}" {look}/>']
    if w >= len(band.state) * CHAR_PX + 10:
        ink = INK if fill in _LIGHT_FILLS or band.tail else "#ffffff"
        parts.append(f'<text x="{x0 + 6:.1f}" y="{y + 15}" font-size="11" font-weight="600" '
                     f'fill="{ink}">{_esc(band.state)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _downtime(down: Downtime, frame: _Frame, lane: int) -> str:
    x0, x1 = frame.x(down.start_ns), frame.x(down.end_ns)
    y = _lane_top(lane) + BAND_OFFSET
    why = "after a crash" if down.reason == "crash" else "after a clean stop"
    tip = (f"{down.node}: no process {why}, from {format_time(down.start_ns)} (last record) "
           f"to {format_time(down.end_ns)} ({format_duration(down.end_ns - down.start_ns)})")
    return (f'<g class="downtime" data-node="{_esc(down.node)}" data-reason="{down.reason}">'
            f'{_title(tip)}<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1.0):.1f}" '
            f'height="{BAND_HEIGHT}" fill="url(#down)"/></g>')


def _glyph(kind: str, x: float, band_y: float) -> str:
    """One shape per marker kind, placed so they never hide each other's meaning:
    faults and commands above the band, rejections below it, starts and stops as a
    vertical rule through it."""
    if kind == "fault":
        return (f'<path d="M{x - 6:.1f},{band_y - 13} L{x + 6:.1f},{band_y - 13} '
                f'L{x:.1f},{band_y - 1} Z" fill="#b91c1c" stroke="#ffffff" stroke-width="1"/>')
    if kind == "command":
        return (f'<path d="M{x:.1f},{band_y - 10} L{x + 4:.1f},{band_y - 5} L{x:.1f},'
                f'{band_y} L{x - 4:.1f},{band_y - 5} Z" fill="#334155"/>')
    if kind == "rejected":
        return _rejected(x, band_y + BAND_HEIGHT + 8)
    rule = (f'<line x1="{x:.1f}" y1="{band_y - 4}" x2="{x:.1f}" y2="{band_y + BAND_HEIGHT + 4}" '
            f'stroke="{_RULE_COLOURS[kind]}" stroke-width="2" stroke-dasharray="3 2"/>')
    return rule + _rule_head(kind, x, band_y - 8)


_RULE_COLOURS = {"restart": "#7c3aed", "stopped": "#475569"}


def _rejected(x: float, y: float) -> str:
    return (f'<circle cx="{x:.1f}" cy="{y}" r="5.5" fill="#f59e0b" stroke="#ffffff"/>'
            f'<path d="M{x - 2.5:.1f},{y - 2.5} L{x + 2.5:.1f},{y + 2.5} M{x + 2.5:.1f},'
            f'{y - 2.5} L{x - 2.5:.1f},{y + 2.5}" stroke="#ffffff" stroke-width="1.6"/>')


def _rule_head(kind: str, x: float, y: float) -> str:
    colour = _RULE_COLOURS[kind]
    if kind == "restart":
        return (f'<circle cx="{x:.1f}" cy="{y}" r="4.5" fill="#ffffff" stroke="{colour}" '
                f'stroke-width="2"/>')
    return f'<rect x="{x - 4:.1f}" y="{y - 4}" width="8" height="8" fill="{colour}"/>'


def _legend_glyph(kind: str) -> str:
    """The marker shapes again, compact and centred on the legend's text line."""
    if kind == "fault":
        return _glyph(kind, 7, 3)
    if kind == "command":
        return _glyph(kind, 7, 1)
    if kind == "rejected":
        return _rejected(7, -4)
    return (f'<line x1="7" y1="-13" x2="7" y2="5" stroke="{_RULE_COLOURS[kind]}" '
            f'stroke-width="2" stroke-dasharray="3 2"/>{_rule_head(kind, 7, -4)}')


def _marker(marker: Marker, frame: _Frame, lane: int) -> str:
    tip = f"{format_time(marker.wall_ns)}  {marker.node} seq {marker.seq}: {marker.summary}"
    band_y = _lane_top(lane) + BAND_OFFSET
    return (f'<g class="marker {marker.kind}" data-node="{_esc(marker.node)}" '
            f'data-seq="{marker.seq}">{_title(tip)}'
            f"{_glyph(marker.kind, frame.x(marker.wall_ns), band_y)}</g>")


def _overlap(overlap: Overlap, frame: _Frame, lanes: int) -> str:
    """Drawn on top of everything but transparent to the pointer, so the marks under it
    keep their hover text; the label carries the overlap's own."""
    x0, x1 = frame.x(overlap.start_ns), frame.x(overlap.end_ns)
    bottom = _lane_top(lanes)
    return (f'<g class="overlap" data-nodes="{_esc(overlap.first.node)} '
            f'{_esc(overlap.second.node)}">'
            f'<rect x="{x0:.1f}" y="{TOP - 4}" width="{max(x1 - x0, 2.0):.1f}" '
            f'height="{bottom - TOP + 4}" fill="#ef4444" fill-opacity="0.16" stroke="#b91c1c" '
            f'stroke-dasharray="4 3" pointer-events="none"/>'
            f'<text x="{x0 + 4:.1f}" y="{TOP - 8}" font-size="11" font-weight="700" '
            f'fill="#b91c1c">{_title("INVARIANT VIOLATED: " + overlap.describe())}'
            f"⚠ {_esc(overlap.first.node)} + {_esc(overlap.second.node)} RUNNING</text></g>")


def _axis(frame: _Frame, lanes: int) -> Iterator[str]:
    bottom = _lane_top(lanes) + 4
    max_ticks = max(2, int(frame.plot_width // 95))
    yield '<g class="axis">'
    for tick in axis_ticks(frame.start_ns, frame.end_ns, max_ticks):
        x = frame.x(tick.wall_ns)
        yield (f'<line class="grid" x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{bottom}" '
               f'stroke="{GRID}"/><line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" '
               f'y2="{bottom + 5}" stroke="{MUTED}"/>'
               f'<text class="tick" x="{x:.1f}" y="{bottom + 18}" font-size="11" '
               f'text-anchor="middle" fill="{INK}">{_esc(tick.label)}</text>')
        if tick.date:
            yield (f'<text class="date" x="{x:.1f}" y="{bottom + 31}" font-size="10" '
                   f'text-anchor="middle" fill="{MUTED}">{tick.date}</text>')
    yield (f'<line x1="{LEFT}" y1="{bottom}" x2="{frame.width - RIGHT}" y2="{bottom}" '
           f'stroke="{MUTED}"/><text x="{frame.width - RIGHT}" y="{bottom + 44}" '
           f'font-size="10" text-anchor="end" fill="{MUTED}">time (UTC)</text></g>')


def _legend_items(timeline: Timeline) -> list[tuple[str, str]]:
    """(swatch markup at the origin, label) for what this picture can contain."""
    states = [*STATE_COLOURS]
    states += sorted({b.state for b in timeline.bands} - set(STATE_COLOURS))
    items = [(f'<rect x="0" y="-10" width="14" height="11" rx="2" fill="{colour_of(s)}"/>', s)
             for s in states]
    items += [(_legend_glyph(kind), MARKER_LABELS[kind]) for kind in MARKER_KINDS]
    items.append(('<rect x="0" y="-10" width="14" height="11" fill="#16a34a"/>'
                  '<rect x="0" y="-10" width="14" height="11" fill="url(#down)"/>',
                  "no process (state kept)"))
    if any(b.tail for b in timeline.bands):
        items.append(('<rect x="0.5" y="-9.5" width="13" height="10" fill="#16a34a" '
                      'fill-opacity="0.3" stroke="#16a34a" stroke-dasharray="4 3"/>',
                      "after the last record"))
    if timeline.overlaps:
        items.append(('<rect x="0" y="-10" width="14" height="11" fill="#ef4444" '
                      'fill-opacity="0.3" stroke="#b91c1c" stroke-dasharray="2 1"/>',
                      "two nodes RUNNING"))
    return items


def _legend(timeline: Timeline, width: int, top: int) -> tuple[str, int]:
    """Laid out left to right, wrapping; returns the markup and its last line's y."""
    parts = ['<g class="legend">']
    x, y = float(LEFT), top
    for swatch, label in _legend_items(timeline):
        size = 20 + len(label) * CHAR_PX + 20
        if x + size > width - RIGHT and x > LEFT:
            x, y = float(LEFT), y + 22
        parts.append(f'<g class="key" transform="translate({x:.1f},{y})">{swatch}'
                     f'<text x="20" y="0" font-size="11" fill="{INK}">{_esc(label)}</text></g>')
        x += size
    parts.append("</g>")
    return "".join(parts), y


_DEFS = (
    '<defs><pattern id="down" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff" '
    'fill-opacity="0.45"/><line x1="0" y1="0" x2="0" y2="6" stroke="#0f172a" '
    'stroke-width="2.2" stroke-opacity="0.55"/></pattern></defs>'
)


def _header(timeline: Timeline, title: str) -> str:
    span = format_duration(timeline.end_ns - timeline.start_ns)
    sub = (f"{len(timeline.nodes)} node(s) · {format_time(timeline.start_ns)} to "
           f"{format_time(timeline.end_ns)} ({span})")
    if timeline.overlaps:
        sub += f" · {len(timeline.overlaps)} RUNNING overlap(s)"
    return (f'<text x="{LEFT}" y="26" font-size="17" font-weight="700" fill="{INK}">'
            f'{_esc(title)}</text><text x="{LEFT}" y="45" font-size="12" fill="{MUTED}">'
            f"{_esc(sub)}</text>")


def _lane_backgrounds(timeline: Timeline, width: int) -> Iterator[str]:
    for i, node in enumerate(timeline.nodes):
        top = _lane_top(i)
        shade = "#f8fafc" if i % 2 == 0 else "#ffffff"
        yield (f'<g class="lane" data-node="{_esc(node)}"><rect x="0" y="{top}" '
               f'width="{width}" height="{LANE}" fill="{shade}"/>'
               f'<text x="{LEFT - 12}" y="{top + BAND_OFFSET + 15}" font-size="13" '
               f'font-weight="600" text-anchor="end" fill="{INK}">{_esc(node)}</text></g>')


def render_svg(timeline: Timeline, *, title: str = "mxrc incident timeline",
               width: int = 1200, standalone: bool = True) -> str:
    """The whole picture as one SVG document (``standalone`` adds the XML declaration).

    Painted back to front: lanes, grid and axis, bands, downtimes, marks, overlaps.
    """
    frame = _Frame.of(timeline, width)
    lanes = len(timeline.nodes)
    lane_of = {node: i for i, node in enumerate(timeline.nodes)}
    legend, legend_y = _legend(timeline, width, _lane_top(lanes) + 76)
    height = legend_y + 18
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{_esc(FONT)}" role="img" '
        f'aria-label="{_esc(title)}">',
        _title(title), _DEFS,
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        _header(timeline, title),
        *_lane_backgrounds(timeline, width),
        *_axis(frame, lanes),
        *(_band(b, frame, lane_of[b.node]) for b in timeline.bands),
        *(_downtime(d, frame, lane_of[d.node]) for d in timeline.downtimes),
        *(_marker(m, frame, lane_of[m.node]) for m in timeline.markers),
        *(_overlap(o, frame, lanes) for o in timeline.overlaps),
        legend,
        "</svg>",
    ]
    declaration = '<?xml version="1.0" encoding="UTF-8"?>\n' if standalone else ""
    return declaration + "\n".join(body) + "\n"


# --------------------------------------------------------------------------- HTML page

_CSS = (
    "body { font-family: " + FONT + "; color: #0f172a; margin: 24px; background: #ffffff; }"
) + """
h1 { font-size: 20px; margin: 0 0 4px; }
p.sub { color: #64748b; margin: 0 0 16px; }
figure { margin: 0 0 24px; overflow-x: auto; }
.alert { border: 1px solid #b91c1c; background: #fef2f2; color: #7f1d1d; padding: 8px 12px;
         border-radius: 6px; margin: 0 0 16px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #e2e8f0; }
th { background: #f1f5f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.time { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
tr.fault td { color: #991b1b; }
tr.rejected td { color: #92400e; }
"""


def render_html(timeline: Timeline, *, title: str = "mxrc incident timeline",
                width: int = 1200) -> str:
    """A self-contained page: the SVG inline plus a table of every marked event."""
    svg = render_svg(timeline, title=title, width=width, standalone=False)
    rows = "\n".join(
        f'<tr class="{m.kind}"><td class="time">{format_time(m.wall_ns)}</td>'
        f"<td>{_esc(m.node)}</td><td class=\"num\">{m.seq}</td><td>{m.kind}</td>"
        f"<td>{_esc(m.summary)}</td></tr>"
        for m in timeline.markers
    )
    alerts = "\n".join(f'<p class="alert">Invariant violated: {_esc(o.describe())}</p>'
                       for o in timeline.overlaps)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<p class="sub">{len(timeline.nodes)} node(s), {format_time(timeline.start_ns)} to \
{format_time(timeline.end_ns)}; all times UTC. Hover a mark for its record.</p>
{alerts}
<figure>
{svg}</figure>
<h2>Marked events</h2>
<table>
<thead><tr><th>time (UTC)</th><th>node</th><th>seq</th><th>kind</th><th>event</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""
