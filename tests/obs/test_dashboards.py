"""The Grafana dashboard (tools/grafana) and the Prometheus alert rules (tools/prometheus).

promtool checks the rules and runs their unit tests, and those unit tests are shown to
catch a broken alert. Every metric and label the dashboard's and the rules' PromQL names
must be one mxrc really exports: the exposition text comes from the real
:class:`NonrtMetrics` (fed real bus events) and the real unit sampler of ``mxrc
monitor``, read with prometheus_client's own parser, so renaming a metric in the code
without the dashboard or the rules fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from mxrc.obs.metrics import NonrtMetrics
from mxrc.service.bus import EventBus
from mxrc.service.events import (
    WAKE_BUCKETS_NS,
    ApiRequest,
    BusEvent,
    CycleHistogram,
    CycleStatus,
    LeaseChanged,
    RingDrops,
    RtFault,
    RtStarted,
)
from mxrc.statechart import default_registry
from mxrc.systemd.monitor import DEFAULT_UNITS, Placement, UnitSampler, parse_show

ROOT: Final = Path(__file__).resolve().parents[2]
DASHBOARD: Final = ROOT / "tools" / "grafana" / "mxrc-dashboard.json"
RULES: Final = ROOT / "tools" / "prometheus" / "mxrc-alerts.yml"
RULE_TESTS: Final = ROOT / "tools" / "prometheus" / "mxrc-alerts.test.yml"

PROMTOOL: Final = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing: tools/setup installs it (Debian package prometheus)",
)

#: Labels Prometheus adds to every scraped series.
TARGET_LABELS: Final = frozenset({"instance", "job"})
#: Variables Grafana itself defines.
GRAFANA_BUILTINS: Final = frozenset({"__rate_interval", "__interval", "__range"})
#: The matcher every dashboard selector carries: the hosts of the selected nodes.
HOST_MATCHER: Final = ("instance", "=~", "($host):[0-9]+")

#: What the dashboard must show and the rules must watch (the metrics asked for).
DASHBOARD_MUST_SHOW: Final = frozenset({
    "mxrc_cycle_wake_latency_seconds_bucket",
    "mxrc_cycle_deadline_misses_total",
    "mxrc_state",
    "mxrc_leader",
    "mxrc_fencing_token",
    "mxrc_lease_remaining_seconds",
    "mxrc_ring_dropped_records_total",
    "systemd_unit_restart_total",
    "mxrc_numa_remote_ratio",
    "mxrc_log_dropped_records_total",
    "mxrc_bus_dropped_events_total",
    "mxrc_rt_attached",
})  # fmt: skip
RULES_MUST_WATCH: Final = frozenset({
    "mxrc_cycle_deadline_misses_total",
    "systemd_unit_restart_total",
    "mxrc_leader",
    "mxrc_numa_remote_ratio",
    "mxrc_log_dropped_records_total",
    "mxrc_rt_attached",
    "mxrc_monitor_systemctl_up",
})  # fmt: skip

#: PromQL's aggregation operators and functions (Prometheus 2.x).
PROMQL_FUNCTIONS: Final = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta",
    "deriv", "exp", "floor", "histogram_count", "histogram_sum", "histogram_fraction",
    "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month",
    "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sqrt", "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
})  # fmt: skip
#: Keywords followed by a parenthesised list of label names.
GROUPING_WORDS: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Keywords that are neither metrics nor functions.
OPERATOR_WORDS: Final = frozenset({"and", "or", "unless", "bool", "offset", "atan2"})
NUMBER_WORDS: Final = frozenset({"inf", "nan"})

_TOKEN: Final = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[a-zA-Z]*)
    | (?P<variable>\$\{[^}]*\}|\$\w+)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[(){},=<>+\-*/%^@])
    """,
    re.VERBOSE,
)
_VARIABLE: Final = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)")
_LABEL_VALUES: Final = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$")


# --- reading PromQL -------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(label for label, _, _ in self.matchers)


@dataclass
class Query:
    """What one PromQL expression names."""

    selectors: list[Selector] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)
    grouping: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def _matchers(
    toks: list[tuple[str, str]], i: int, expr: str
) -> tuple[list[tuple[str, str, str]], int]:
    """The label matchers of a selector; ``toks[i]`` is its ``{``. Returns the index after
    the closing ``}``."""
    out: list[tuple[str, str, str]] = []
    i += 1
    while toks[i] != ("op", "}"):
        (kind_l, label), (_, op), (kind_v, value) = toks[i], toks[i + 1], toks[i + 2]
        if kind_l != "ident" or op not in ("=", "!=", "=~", "!~") or kind_v != "string":
            raise ValueError(f"bad label matcher {toks[i : i + 3]} in {expr!r}")
        out.append((label, op, _unquote(value)))
        i += 3
        if toks[i] == ("op", ","):
            i += 1
    return out, i + 1


def parse_promql(expr: str) -> Query:
    """The metrics (with their matchers), functions, grouping labels and Grafana
    variables of ``expr``: label names, strings, durations, numbers and keywords are
    never taken for metric names."""
    query = Query()
    query.variables = {a or b for a, b in _VARIABLE.findall(expr)}
    toks = tokens(expr)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else None
        if kind == "op" and text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        word = text.lower()
        if word in GROUPING_WORDS:
            i += 1
            if following == ("op", "("):
                i += 1
                while toks[i] != ("op", ")"):
                    if toks[i][0] == "ident":
                        query.grouping.add(toks[i][1])
                    i += 1
                i += 1
            continue
        if word in OPERATOR_WORDS or word in NUMBER_WORDS:
            i += 1
        elif following == ("op", "(") or (
            following is not None and following[1].lower() in ("by", "without")
        ):  # a call, or an aggregation with its grouping first: sum by (x) (...)
            query.functions.add(text)
            i += 1
        elif following == ("op", "{"):
            matchers, i = _matchers(toks, i + 1, expr)
            query.selectors.append(Selector(text, tuple(matchers)))
        else:
            query.selectors.append(Selector(text))
            i += 1
    return query


# --- what mxrc exports ----------------------------------------------------------------------

SHOW: Final = """Id=mxrc-nonrt.service
ActiveState=active
NRestarts=1
CPUUsageNSec=1500000000
MemoryCurrent=52428800
MainPID=4242

Id=mxrc-rt.service
ActiveState=failed
NRestarts=5
CPUUsageNSec=900000000
MemoryCurrent=18874368
MainPID=4243

Id=mxrc.target
ActiveState=active
NRestarts=0
CPUUsageNSec=[not set]
MemoryCurrent=[not set]
MainPID=0
"""


def nonrt_exposition() -> str:
    """/metrics of nonrt after the RT process started, cycled, faulted and dropped ring
    records, a lease was won, the bus queued events and the API answered."""
    chart = default_registry().get("rt")
    metrics = NonrtMetrics("node-1", chart.states, chart=chart.ref)
    bus = EventBus(64)
    metrics.bind_bus(bus)
    now = time.monotonic_ns()
    events: list[BusEvent] = [
        RtStarted(cycle=0, mono_ns=now, cpu=1, priority=80, period_ns=1_000_000),
        CycleStatus(
            cycle=999,
            slot=9,
            mono_ns=now,
            wake_p99_us=21.0,
            misses=3,
            tracking_error=0.01,
            driving=True,
            joint_position=0.25,
        ),
        CycleHistogram(
            cycle=999,
            mono_ns=now,
            bounds_ns=WAKE_BUCKETS_NS,
            counts=tuple(400 + 100 * k for k in range(len(WAKE_BUCKETS_NS))),
            total=1000,
            sum_ns=3e7,
        ),
        RtFault(
            cycle=1000,
            mono_ns=now,
            cause="lease_expired",
            mode=2,
            token=7,
            lease_left_ns=-1,
            expected_token=7,
        ),
        RingDrops(mono_ns=now, new=12, total=12),
        LeaseChanged(now, leader=True, quorum=True, token=7, deadline_ns=now + 2_000_000_000),
        ApiRequest("GET", "/metrics", 200, 0.0007),
    ]
    for event in events:
        metrics.observe(event)
        bus.publish(event)  # the bus's own figures: queued, never dispatched here
    return generate_latest(metrics.registry).decode()


def monitor_exposition() -> str:
    """mxrc monitor's /metrics, its sampler holding what a refresh would have read."""
    sampler = UnitSampler(list(DEFAULT_UNITS))
    sampler.facts = parse_show(SHOW)
    sampler.placement = {
        "mxrc-nonrt.service": Placement(9500, 500, 0.05),
        "mxrc-rt.service": Placement(2000, 0, 0.0),
    }
    registry = CollectorRegistry()
    registry.register(sampler)
    return generate_latest(registry).decode()


def _declared(family: Metric) -> Iterator[tuple[str, frozenset[str]]]:
    """The sample names a family's type promises, even before it has samples."""
    name = family.name
    if family.type == "counter":
        yield f"{name}_total", frozenset()
    elif family.type == "histogram":
        yield f"{name}_bucket", frozenset({"le"})
        yield f"{name}_sum", frozenset()
        yield f"{name}_count", frozenset()
    elif family.type == "summary":
        yield name, frozenset({"quantile"})
        yield f"{name}_sum", frozenset()
        yield f"{name}_count", frozenset()
    elif family.type == "info":
        yield f"{name}_info", frozenset()
    else:
        yield name, frozenset()


def exported(*texts: str) -> dict[str, frozenset[str]]:
    """Sample name -> the label names its samples carry, from exposition text."""
    found: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for name, labels in _declared(family):
                found.setdefault(name, set()).update(labels)
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in found.items()}


@pytest.fixture(scope="module")
def real_metrics() -> dict[str, frozenset[str]]:
    return exported(nonrt_exposition(), monitor_exposition())


def unknown_references(query: Query, known: Mapping[str, frozenset[str]]) -> list[str]:
    """Everything ``query`` names that the exporters do not: metrics, labels, functions."""
    problems = [f"unknown metric {m}" for m in sorted(query.metrics - known.keys())]
    labels_here: set[str] = set(TARGET_LABELS)
    for selector in query.selectors:
        labels = known.get(selector.metric)
        if labels is None:
            continue
        labels_here |= labels
        problems += [
            f"{selector.metric} has no label {label!r} (it has {sorted(labels)})"
            for label in sorted(selector.labels - labels - TARGET_LABELS)
        ]
    problems += [f"grouping by unknown label {g!r}" for g in sorted(query.grouping - labels_here)]
    problems += [f"unknown function {f}" for f in sorted(query.functions - PROMQL_FUNCTIONS)]
    return problems


# --- the files ------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]


def variable_queries() -> Iterator[tuple[str, str, str]]:
    """(variable, selector PromQL, label) of every label_values() template variable."""
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match is not None, f"variable {variable['name']}: not label_values(): {text!r}"
        yield variable["name"], match["selector"], match["label"]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


# --- the PromQL reader itself ---------------------------------------------------------------


def test_promql_reader_finds_metrics_and_skips_functions_labels_strings_and_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{instance=~"($host):[0-9]+",'
        ' name!="b_total"}[$__rate_interval]))) > 1e-3 * on (job) group_left (node) c_info'
        " unless ignoring(le) max without (x) (d offset 5m) or absent(e) and bool Inf"
        " / sum(rate(f_total[1h:5m]))"
    )
    query = parse_promql(expr)
    assert [s.metric for s in query.selectors] == ["a_bucket", "c_info", "d", "e", "f_total"]
    assert query.selectors[0].matchers == (
        ("instance", "=~", "($host):[0-9]+"),
        ("name", "!=", "b_total"),
    )
    assert query.functions == {"histogram_quantile", "sum", "rate", "max", "absent"}
    assert query.grouping == {"instance", "le", "job", "node", "x"}
    assert query.variables == {"host", "__rate_interval"}


def test_a_renamed_metric_label_or_misspelt_function_is_reported() -> None:
    known = {"a_total": frozenset({"name"}), "b": frozenset()}
    good = parse_promql('sum by (name, job) (rate(a_total{name="x"}[5m])) / b')
    assert unknown_references(good, known) == []
    renamed = parse_promql('rate(a_count{name="x"}[5m])')
    assert unknown_references(renamed, known) == ["unknown metric a_count"]
    relabelled = parse_promql('rate(a_total{unit="x"}[5m])')
    assert unknown_references(relabelled, known) == [
        "a_total has no label 'unit' (it has ['name'])"
    ]
    grouped = parse_promql("sum by (unit) (b)")
    assert unknown_references(grouped, known) == ["grouping by unknown label 'unit'"]
    misspelt = parse_promql("rat(a_total[5m])")
    assert unknown_references(misspelt, known) == ["unknown function rat"]
    with pytest.raises(ValueError, match="without a metric name"):
        parse_promql('{__name__="b"}')


def test_the_exposition_is_read_with_types_and_labels(
    real_metrics: Mapping[str, frozenset[str]],
) -> None:
    """The reference the checks below use: real names, histogram and counter suffixes."""
    assert real_metrics["mxrc_cycle_wake_latency_seconds_bucket"] == {"le"}
    assert "mxrc_cycle_wake_latency_seconds_count" in real_metrics
    assert "mxrc_cycle_wake_latency_seconds" not in real_metrics  # a histogram, not a gauge
    assert "mxrc_cycle_deadline_misses_total" in real_metrics
    assert "mxrc_cycle_deadline_misses" not in real_metrics
    assert real_metrics["mxrc_state"] == {"state"}
    assert real_metrics["systemd_unit_restart_total"] == {"name"}
    assert real_metrics["systemd_unit_state"] == {"name", "state"}
    assert real_metrics["mxrc_numa_remote_ratio"] == {"name"}
    assert real_metrics["mxrc_rt_faults_total"] == {"cause"}
    assert real_metrics["mxrc_build_info"] == {"version", "node", "chart"}


# --- every name is a real one -----------------------------------------------------------------


def test_every_metric_and_label_the_dashboard_names_is_exported(
    real_metrics: Mapping[str, frozenset[str]],
) -> None:
    problems: list[str] = []
    shown: set[str] = set()
    for where, expr in dashboard_queries():
        query = parse_promql(expr)
        shown |= query.metrics
        problems += [f"{where}: {p}" for p in unknown_references(query, real_metrics)]
    for name, selector, label in variable_queries():
        query = parse_promql(selector)
        problems += [f"variable {name}: {p}" for p in unknown_references(query, real_metrics)]
        labels = {lab for m in query.metrics for lab in real_metrics.get(m, frozenset())}
        if label not in labels | TARGET_LABELS:
            problems.append(f"variable {name}: no label {label!r} on {sorted(query.metrics)}")
    assert problems == [], "\n".join(problems)
    assert sorted(DASHBOARD_MUST_SHOW - shown) == []


def test_every_metric_and_label_the_rules_name_is_exported(
    real_metrics: Mapping[str, frozenset[str]],
) -> None:
    problems: list[str] = []
    watched: set[str] = set()
    for rule in rules():
        query = parse_promql(rule["expr"])
        watched |= query.metrics
        problems += [f"{rule['alert']}: {p}" for p in unknown_references(query, real_metrics)]
    assert problems == [], "\n".join(problems)
    assert sorted(RULES_MUST_WATCH - watched) == []


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_is_importable_json_with_datasource_and_node_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["node"]["type"] == "query"
    assert variables["node"]["datasource"]["uid"] == "${datasource}"
    assert variables["host"]["datasource"]["uid"] == "${datasource}"
    assert [n for n, _, _ in variable_queries()] == ["node", "host"]
    assert {n: lab for n, _, lab in variable_queries()} == {"node": "node", "host": "instance"}
    host_selector = next(s for n, s, _ in variable_queries() if n == "host")
    assert parse_promql(host_selector).selectors[0].matchers == (("node", "=~", "$node"),)
    # host:port -> host, so that nonrt's and mxrc monitor's targets of a node both match
    regex = variables["host"]["regex"]
    assert regex.startswith("/") and regex.endswith("/")
    match = re.fullmatch(regex[1:-1], "10.0.0.5:8780")
    assert match is not None and match[1] == "10.0.0.5"


def test_every_panel_has_a_title_the_datasource_and_queries() -> None:
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]} | GRAFANA_BUILTINS
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {ids}"
    assert len(ids) >= len(DASHBOARD_MUST_SHOW) - 2
    cells: dict[tuple[int, int], int] = {}
    for panel in board["panels"]:
        where = f"panel {panel['id']}"
        assert isinstance(panel["id"], int), where
        assert panel["title"].strip(), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == panel["datasource"], where
            query = parse_promql(target["expr"])
            assert query.selectors, where
            for selector in query.selectors:  # every series is of the selected nodes
                assert HOST_MATCHER in selector.matchers, f"{where}: {selector}"
            assert query.variables <= defined, f"{where}: {query.variables - defined}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        for x in range(grid["x"], grid["x"] + grid["w"]):  # no two panels overlap
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps panel {cells[x, y]}"
                cells[x, y] = panel["id"]


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (Grafana's variables replaced by what Grafana
    would send), as recording rules."""
    values = {"host": "(node-a|node-b)", "node": "node-a", "__rate_interval": "1m"}
    queries = list(dashboard_queries())
    records = []
    for index, (_, expr) in enumerate(queries):
        concrete = _VARIABLE.sub(lambda m: values[m[1] or m[2]], expr)
        records.append({"record": f"dashboard:query_{index}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


# --- the alert rules ------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout, result.stdout


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout + result.stderr


def test_every_alert_is_explained_and_tested_firing_and_silent() -> None:
    alerts = rules()
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"].strip(), name
        description = rule["annotations"]["description"]
        assert re.search(r"`(journalctl|systemctl|mxrc|curl|numastat) ", description), name
    firing: set[str] = set()
    silent: set[str] = set()
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert sorted(set(names) - firing) == [], "alerts never shown to fire"
    assert sorted(set(names) - silent) == [], "alerts never shown to stay silent"
    assert sorted((firing | silent) - set(names)) == [], "tests of alerts that do not exist"


@needs_promtool
def test_the_unit_tests_catch_an_alert_that_never_fires_or_always_fires(tmp_path: Path) -> None:
    """Each alert in turn replaced by one that never fires, then by one that always does:
    promtool's unit tests must fail, on that alert and no other."""
    original = yaml.safe_load(RULES.read_text())
    names = [rule["alert"] for group in original["groups"] for rule in group["rules"]]
    runs: dict[tuple[str, str], subprocess.Popen[str]] = {}
    for name in names:
        for broken, expr in (("never", "vector(1) < 0"), ("always", "vector(1)")):
            doc = yaml.safe_load(RULES.read_text())
            for group in doc["groups"]:
                for rule in group["rules"]:
                    if rule["alert"] == name:
                        rule["expr"] = expr
            directory = tmp_path / f"{name}-{broken}"
            directory.mkdir()
            (directory / RULES.name).write_text(yaml.safe_dump(doc, sort_keys=False))
            shutil.copy(RULE_TESTS, directory / RULE_TESTS.name)
            assert PROMTOOL is not None
            runs[name, broken] = subprocess.Popen(
                [PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=directory,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
    for (name, broken), run in runs.items():
        output, _ = run.communicate(timeout=60)
        assert run.returncode == 1, f"{name} made to fire {broken}: tests still pass\n{output}"
        failed = set(re.findall(r"alertname: (\w+), time:", output))
        assert failed == {name}, f"{name} made to fire {broken}:\n{output}"
