"""The monitoring files: deploy/prometheus/alerts.yml checked and unit-tested with promtool (Debian's
`prometheus` package; .ci/run installs it), deploy/prometheus/prometheus.yml checked and held to the
Kubernetes manifests, deploy/grafana/realtime.json held to its shape and its queries parsed by
promtool, and every metric the rules and the dashboard name (with the labels and label values they
select) found in the /metrics of a running `python -m app serve` that has had WebSocket, SSE and
long-poll clients and a publish.

Without promtool these tests skip, saying how to get it; under CI=true they fail instead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.conftest import LiveServer, auth, eventually, service_token, skip_unless_ci, token

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "realtime.json"
K8S = ROOT / "deploy" / "k8s"
WAIT = 15.0

# Labels a target gets from Prometheus's scrape (and deploy/prometheus/prometheus.yml's relabelling),
# not from the service; `up` is Prometheus's own series of every target.
TARGET_LABELS = {"instance", "job", "namespace", "pod"}
PROMETHEUS_OWN = {"up": {"instance", "job", "namespace", "pod"}}


# --------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------


def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        skip_unless_ci("promtool is missing: apt-get install prometheus (Debian's package ships promtool; .ci/run installs it)")
    assert found
    return found


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, result.stdout


def _unit_test_dir(tmp_path: Path) -> Path:
    """alerts.test.yml next to a copy of alerts.yml without annotations: promtool compares
    annotations exactly, and the runbooks' wording is not what these tests are about (their
    templates are checked by `promtool check rules`)."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    return tmp_path


def test_alert_rules_pass_their_promtool_unit_tests(tmp_path: Path) -> None:
    result = promtool("test", "rules", "alerts.test.yml", cwd=_unit_test_dir(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_promtool_catches_a_broken_rule_and_a_wrong_expectation(tmp_path: Path) -> None:
    """Neither check is a rubber stamp: a rule that does not parse fails `check rules`, and a unit
    test expecting the wrong labels fails `test rules`."""
    rules = yaml.safe_load(ALERTS.read_text())
    rules["groups"][0]["rules"][0]["expr"] = "sum(rate(realtime_events_delivered_total[5m])"  # a parenthesis short
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout + result.stderr

    workdir = _unit_test_dir(tmp_path / "unit")
    tests = yaml.safe_load((workdir / "alerts.test.yml").read_text())
    tests["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["instance"] = "someone-else"
    (workdir / "alerts.test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", "alerts.test.yml", cwd=workdir)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names are unique"
    assert not set(names) - fired, f"no unit test where these fire: {sorted(set(names) - fired)}"
    assert not set(names) - quiet, f"no unit test where these stay quiet: {sorted(set(names) - quiet)}"
    assert not (fired | quiet) - set(names), f"tests of alerts that do not exist: {sorted((fired | quiet) - set(names))}"


def test_every_alert_has_a_severity_a_duration_a_summary_and_a_runbook() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert "for" in rule, f"{name}: say how long it must hold (for: 0m when at once)"
        annotations = rule["annotations"]
        assert annotations.get("summary"), name
        runbook = annotations.get("runbook", "")
        assert "First check" in runbook and len(runbook) > 80, f"{name}: the runbook says what it means and what to check first"


def _scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}


def test_prometheus_config_passes_promtool_and_scrapes_the_manifests_pods(tmp_path: Path) -> None:
    # Debian's promtool has no Kubernetes discovery: check everything else with static targets
    checked = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for job in checked["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}], job["job_name"]
        job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(checked))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    # the jobs are those the rules and the dashboard name, each keeping the pods of one Deployment
    jobs = _scrape_jobs()
    named = set(re.findall(r'job=~?"([^"]+)"', ALERTS.read_text() + DASHBOARD.read_text()))
    assert {part for value in named for part in value.split("|")} == set(jobs)
    components = {"realtime": ("forge-realtime", "server"), "realtime-ingest": ("forge-realtime-ingest", "ingest")}
    manifests = {doc["metadata"]["name"]: doc for path in K8S.glob("*.yaml")
                 for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == "Deployment"}
    for job_name, (deployment_name, component) in components.items():
        keep = jobs[job_name]["relabel_configs"][0]
        template = manifests[deployment_name]["spec"]["template"]["metadata"]
        labels = template["labels"]
        assert keep["action"] == "keep"
        assert keep["regex"] == f"{labels['app.kubernetes.io/name']};{labels['app.kubernetes.io/component']}"
        assert labels["app.kubernetes.io/component"] == component
        assert template["annotations"]["prometheus.io/scrape"] == "true"


# --------------------------------------------------------------------------------------------
# the dashboard
# --------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] not in ("row", "text")]


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel["targets"]]


def grafana_free(expr: str) -> str:
    """A panel's query as Prometheus would get it (Grafana's variables substituted)."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*")


def test_the_dashboard_has_a_datasource_variable_and_the_panels_operators_need() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    query = variables["instance"]
    assert query["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = {panel["title"] for panel in panels()}
    wanted = {"Connections by transport", "Deliveries/s by transport", "Publish→dispatch latency", "Slow consumers by transport",
              "Resumes, resets and replay", "Limit hits by limit", "Ingest accepted vs refused", "Malformed entries by source",
              "Web Push results by result", "Redis failures by kind", "Redis pool in use", "Database: outbox relay errors",
              "Outbox", "Notifications and snoozes"}
    assert not wanted - titles, f"missing panels: {sorted(wanted - titles)}"
    # ids unique; panels inside the 24-column grid and not on top of each other
    every = board["panels"]
    assert len({panel["id"] for panel in every}) == len(every)
    cells: set[tuple[int, int]] = set()
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_the_dashboards_queries_parse(tmp_path: Path) -> None:
    """Every panel's query, Grafana's variables substituted, parsed by promtool as a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{n}", "expr": grafana_free(expr)} for n, (_, expr) in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# what the files name exists in /metrics
# --------------------------------------------------------------------------------------------

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")  # not a function's name


class Selector(typing.NamedTuple):
    metric: str
    matchers: list[tuple[str, str, str]]


def parse(expr: str) -> tuple[list[Selector], set[str]]:
    """The metric selectors (name, label matchers) and the grouping labels of a PromQL expression:
    enough PromQL for these files, not a full parser (test_the_parser_reads_promql holds it)."""
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    grouping = {label.strip() for _, labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
    expr = GROUPING.sub(" ", expr)
    found: list[Selector] = []

    def selector(match: re.Match[str]) -> str:
        found.append(Selector(match.group(1) or "", MATCHER.findall(match.group(2))))
        return " "

    expr = SELECTOR.sub(selector, expr)
    for name in IDENTIFIER.findall(expr):
        if name.lower() not in KEYWORDS:
            found.append(Selector(name, []))
    return found, grouping


def test_the_parser_reads_promql() -> None:
    selectors, grouping = parse(
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="1", y=~"b|c"}[5m]))) > 0.25 '
        "and on (instance) sum without (z) (b_total offset 5m) / 1e3 > bool c")
    assert selectors == [Selector("a_bucket", [("x", "=", "1"), ("y", "=~", "b|c")]), Selector("b_total", []),
                         Selector("c", [])]
    assert grouping == {"instance", "le", "z"}


def named_by_the_files() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every panel, and the dashboard variable's selector."""
    named = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    named += [(f"panel {title!r}", grafana_free(expr)) for title, expr in dashboard_exprs()]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["definition"])
            assert inner, variable["definition"]
            named.append((f"variable {variable['name']}", inner.group(1)))
    return named


def registry_labels() -> dict[str, set[str]]:
    """Label names of every metric the service defines, seen or not yet (a family whose labelled
    series have not been created is on /metrics without samples)."""
    import app.gc_tuning
    import app.metrics

    labels: dict[str, set[str]] = {}
    for module in (app.metrics, app.gc_tuning):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                labels[value._name] = set(value._labelnames)
    return labels


# Label values the rules and panels select that a short exercise does not produce, and where the
# code names them (the rest, transports, limits, engine failure kinds, limit names, were seen).
def known_values() -> dict[str, set[str]]:
    from app.metrics import ENGINE_FAILURE_KINDS, LIMIT_NAMES
    from app.push.sender import Result

    return {
        "result": set(typing.get_args(Result)) | {"failed"},  # app/push/worker.py counts "failed" itself
        "source": {"http", "ingest", "log"},  # app/api/publish.py, app/ingest.py, app/eventlog/redis.py
        "reason": {"slow_consumer", "replay_overflow"},  # app/core/session.py
        "limit": set(LIMIT_NAMES),
        "kind": set(ENGINE_FAILURE_KINDS),
        "path": {"direct", "asgi"},
    }


SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "unknown": ("",)}


def exported(metrics_text: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Every sample name /metrics offers with its label names, and every label's values seen."""
    names: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    fallback = registry_labels()
    for family in text_string_to_metric_families(metrics_text):
        for suffix in SAMPLE_SUFFIXES[family.type]:
            names.setdefault(family.name + suffix, set(fallback.get(family.name, set())))
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    for name, labels in list(names.items()):
        if name.endswith("_bucket"):
            labels.add("le")
    return names, values


@contextlib.asynccontextmanager
async def clients_on_every_transport(server: LiveServer) -> Any:
    """A WebSocket, an SSE stream and a waiting long-poll on analysis:a1, each having received one
    published event: every transport's connection, delivery and latency series exist."""
    tok = token(channels=["analysis:*"])
    channel = "analysis:a1"
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http, \
            connect(f"{server.ws_url}/v1/ws?channels={channel}", additional_headers=auth(tok), proxy=None) as ws, \
            http.stream("GET", "/v1/sse", params={"channels": channel}, headers=auth(tok)) as sse:
        assert sse.status_code == 200
        poll = asyncio.create_task(http.get("/v1/poll", params={"channels": channel, "timeout": 10}, headers=auth(tok)))

        async def connected() -> bool:
            text = (await http.get("/metrics")).text
            return all(f'realtime_connections{{transport="{t}"}} 1.0' in text for t in ("ws", "sse", "poll"))

        await eventually(connected, timeout=WAIT)
        published = await http.post("/v1/events", headers=auth(service_token()),
                                    json={"tenant": "t1", "channel": channel, "type": "analysis.progress",
                                          "data": {"analysisId": "a1", "progress": 5}})
        assert published.status_code == 202, published.text
        event_id = published.json()["id"]
        async with asyncio.timeout(WAIT):
            while json.loads(await ws.recv()).get("id") != event_id:
                pass
            async for line in sse.aiter_lines():
                if line == f"id: {event_id}":
                    break
            answer = await poll
        assert [event["id"] for event in answer.json()["events"]] == [event_id]
        yield http


async def test_every_metric_the_rules_and_the_dashboard_name_is_in_metrics(live_server: LiveServer) -> None:
    async with clients_on_every_transport(live_server) as http:
        text = (await http.get("/metrics")).text
    names, values = exported(text)
    names.update({name: set(labels) for name, labels in PROMETHEUS_OWN.items()})
    known = known_values()
    problems: list[str] = []
    for where, expr in named_by_the_files():
        selectors, grouping = parse(expr)
        labels_here: set[str] = set(TARGET_LABELS)
        for selector in selectors:
            if selector.metric not in names:
                problems.append(f"{where}: {selector.metric} is not on /metrics")
                continue
            labels_here |= names[selector.metric]
            for label, op, value in selector.matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in names[selector.metric]:
                    problems.append(f"{where}: {selector.metric} has no label {label!r}")
                elif op == "=" and value not in values.get(label, set()) | known.get(label, set()):
                    problems.append(f"{where}: {selector.metric}{{{label}={value!r}}}: no such {label}")
        problems += [f"{where}: groups by {label!r}, which none of its metrics has" for label in grouping - labels_here]
    assert not problems, "\n".join(problems)
    for transport in ("ws", "sse", "poll"):  # the exercise made the labelled series the panels show
        assert f'realtime_events_delivered_total{{transport="{transport}"}}' in text


def test_a_metric_that_does_not_exist_is_reported() -> None:
    """The check above names what is wrong: a metric, a label and a label value that do not exist."""
    text = ('# HELP realtime_limit_hits_total x\n# TYPE realtime_limit_hits_total counter\n'
            'realtime_limit_hits_total{limit="redis_pool"} 0\n')
    names, values = exported(text)
    selectors, _ = parse('rate(realtime_limit_hits_total{limit="redis_pol", colour="x"}[5m]) + realtime_no_such_thing')
    assert [s.metric for s in selectors] == ["realtime_limit_hits_total", "realtime_no_such_thing"]
    assert "realtime_no_such_thing" not in names
    assert "colour" not in names["realtime_limit_hits_total"]
    assert "redis_pol" not in values["limit"] | known_values()["limit"]
