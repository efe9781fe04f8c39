"""Drawing a statechart: DOT text built from the chart data, rendered by Graphviz.

The DOT is built here (pure, tested without Graphviz) rather than through
``transitions``' diagram extension so that the picture shows exactly the chart file:
guards on the edges, the cause requirement, the driving state, and the current state
highlighted for an operator or an incident report.
"""

from __future__ import annotations

import graphviz

from mxrc.statechart import Chart

STATE_COLOURS = {
    "INIT": "#d9d9d9",
    "READY": "#9ecae1",
    "RUNNING": "#a1d99b",
    "SAFE_MODE": "#fc9272",
}
CURRENT_BORDER = "#08306b"


def to_dot(chart: Chart, current: str | None = None) -> str:
    graph = graphviz.Digraph(
        chart.name,
        graph_attr={
            "rankdir": "LR",
            "label": f"{chart.ref}" + (f"  ·  current: {current}" if current else ""),
            "labelloc": "t",
            "fontname": "Helvetica",
            "fontsize": "12",
        },
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"},
        edge_attr={"fontname": "Helvetica", "fontsize": "10"},
    )
    graph.node("__start", label="", shape="point", width="0.15", style="filled", fillcolor="black")
    graph.edge("__start", chart.initial)
    for state in chart.states:
        attrs = {
            "fillcolor": STATE_COLOURS.get(state, "#f0f0f0"),
            "tooltip": chart.descriptions.get(state, ""),
        }
        if state in chart.driving_states:
            attrs["peripheries"] = "2"
        if state == current:
            attrs.update(penwidth="3", color=CURRENT_BORDER, fontname="Helvetica-Bold")
        graph.node(state, **attrs)
    for t in chart.transitions:
        label = t.trigger
        if t.requires_cause:
            label += "(cause)"
        if t.guards:
            label += "\n[" + " ∧ ".join(t.guards) + "]"
        for source in t.sources:
            graph.edge(source, t.dest, label=label)
    return str(graph.source)


def render(chart: Chart, fmt: str, current: str | None = None) -> bytes:
    """Render with the ``dot`` program (Debian package ``graphviz``)."""
    try:
        return bytes(graphviz.Source(to_dot(chart, current)).pipe(format=fmt))
    except graphviz.ExecutableNotFound:
        raise RuntimeError(
            "Graphviz's 'dot' program is not installed (Debian: apt-get install graphviz)"
        ) from None
