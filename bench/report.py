"""Results: results.json (every run), RESULTS.md (tables, the bar, validity notes, findings) and chart.png."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from bench.systems import SYSTEMS

OURS = ("ours-ws", "ours-sse", "ours-poll")
NODE, PYSIO = "socketio-node", "python-socketio"
NOTES = "NOTES.md"  # hand-written findings (profiles, changes), included in RESULTS.md


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _rows(records: list[dict], scenario: str) -> list[dict]:
    return [r for r in records if r["scenario"] == scenario]


def _gen_bound(rec: dict) -> bool:
    return any(s.get("generator_bound") for s in rec.get("steps", []))


def _fail_reason(rec: dict) -> str:
    steps = rec.get("steps", [])
    if rec.get("status") == "error":
        return "error: " + rec.get("error", "")[:160].replace("|", "/").replace("\n", " ")
    failed = [s for s in steps if not s["held"]]
    if not steps:
        return "no step ran"
    if _gen_bound(rec):
        g = next(s for s in steps if s.get("generator_bound"))
        return f"generator-bound at {_f(g['rate'])}/s (gen {g['gen_cpu_pct']}%): score is a lower bound"
    if not failed:
        return f"held every step up to {_f(steps[-1]['rate'])}/s (not pushed further)"
    best = rec.get("best") or {}
    above = [s for s in failed if s["rate"] > best.get("rate", 0)]
    f = min(above or failed, key=lambda s: s["rate"])
    why = []
    if f["p99_ms"] is not None and f["p99_ms"] > 100:
        why.append(f"p99 {_f(f['p99_ms'])} ms")
    if not f["complete"]:
        why.append(f"{f['received']:,}/{f['expected']:,} delivered in time")
    if f.get("http_errors"):
        why.append(f"{f['http_errors']:,} HTTP 5xx answers")
    if f.get("alive") is not None and rec.get("connect") and f["alive"] < rec["connect"]["connected"]:
        why.append(f"{rec['connect']['connected'] - f['alive']} clients cut off")
    return f"fails at {_f(f['rate'])}/s: " + (", ".join(why) or "?")


def stepped_table(records: list[dict], scenario: str, unit: str) -> list[str]:
    rows = _rows(records, scenario)
    if not rows:
        return ["(not run)"]
    out = [f"| N | system | procs | score ({unit} held) | delivered msg/s | p50 ms | p99 ms | p99.9 ms | server CPU % "
           "| server RSS MB | generator CPU % | peak msg/s (p99 ms there; server CPU per message) | valid | limit |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["processes"], list(SYSTEMS).index(r["system"]))):
        b = r.get("best") or {}
        valid = "yes" if r.get("status") == "ok" and r.get("steps") and not _gen_bound(r) else "no"
        score = _f(b.get("rate")) if b else "–"
        if b and _gen_bound(r):
            score = "≥ " + score
        conn = r.get("connect", {})
        n_txt = _f(r["n"]) + ("" if not conn or conn.get("connected") == r["n"] else f" ({_f(conn.get('connected'))} conn.)")
        pk = r.get("peak") or {}
        peak = f"{_f(pk.get('delivered_per_s'))} ({_f(pk.get('p99_ms'))})" if pk else "–"
        if pk and pk.get("delivered_per_s"):
            peak += f"; {pk['server_cpu_pct'] / 100 / pk['delivered_per_s'] * 1e6:.0f} µs CPU/msg"
        out.append(f"| {n_txt} | {r['system']} | {r['processes']} | {score} | {_f(b.get('delivered_per_s'))} | "
                   f"{_f(b.get('p50_ms'))} | {_f(b.get('p99_ms'))} | {_f(b.get('p999_ms'))} | {_f(b.get('server_cpu_pct'))} | "
                   f"{_f(b.get('server_rss_mb'))} | {_f(b.get('gen_cpu_pct'))} | {peak} | {valid} | {_fail_reason(r)} |")
    return out


def idle_table(records: list[dict]) -> list[str]:
    rows = _rows(records, "idle")
    if not rows:
        return ["(not run)"]
    out = ["| system | N requested | connected | RSS before MB | RSS after MB | KB per connection | server CPU % idle |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: list(SYSTEMS).index(r["system"])):
        i = r.get("idle", {})
        if r.get("status") != "ok":
            out.append(f"| {r['system']} | {_f(r['n'])} | – | – | – | – | {r.get('status')}: {r.get('error', '')[:120]} |")
            continue
        out.append(f"| {r['system']} | {_f(r['n'])} | {_f(i.get('connected'))} | {_f(i.get('rss_before_mb'))} | "
                   f"{_f(i.get('rss_after_mb'))} | {_f(i.get('kb_per_connection'))} | {_f(i.get('server_cpu_pct'))} |")
    return out


def resume_table(records: list[dict]) -> list[str]:
    rows = _rows(records, "resume")
    if not rows:
        return ["(not run)"]
    out = ["| system | own events missed | unrelated backlog | replayed | time to replay all (ms, median) | attempts (ms) "
           "| note |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: list(SYSTEMS).index(r["system"])):
        if r.get("status") == "unsupported":
            out.append(f"| {r['system']} | {_f(r['n'])} | – | 0 | not possible | – | {r.get('note')} |")
            continue
        if r.get("status") != "ok":
            out.append(f"| {r['system']} | {_f(r['n'])} | – | – | – | – | error: {r.get('error', '')[:160]} |")
            continue
        res, bl = r.get("resume", {}), r.get("backlog", {})
        note = "; ".join(r.get("notes", []))[:300]
        out.append(f"| {r['system']} | {_f(res.get('expected'))} | {_f(bl.get('unrelated'))} | {_f(res.get('replayed'))} | "
                   f"{_f(res.get('ms'))} | {', '.join(_f(x) for x in res.get('attempts_ms', []))} | {note} |")
    return out


def _by(records: list[dict], scenario: str, system: str, n: int | None, processes: int = 1) -> dict | None:
    for r in records:
        if (r["scenario"] == scenario and r["system"] == system and r["n"] == n and r["processes"] == processes
                and r.get("status") == "ok"):
            return r
    return None


def _common_p99(recs: list[dict]) -> tuple[float | None, dict[str, float | None]]:
    """p99 of each system at the highest rate every one of them kept up with (the stepping shares
    rates): the same offered load for all."""
    held = [{s["rate"]: s for s in r.get("steps", []) if s["complete"] and not s.get("generator_bound")} for r in recs]
    common = set.intersection(*(set(h) for h in held)) if held else set()
    if not common:
        return None, {}
    rate = max(common)
    return rate, {r["system"]: h[rate]["p99_ms"] for r, h in zip(recs, held, strict=True)}


def bar_table(records: list[dict]) -> list[str]:
    out = ["| scenario | N | our system | ours | Socket.IO-Node | python-socketio | criterion | met? |",
           "|---|---|---|---|---|---|---|---|"]
    for scenario in ("fanout", "targeted", "twoproc"):
        ns = sorted({r["n"] for r in _rows(records, scenario)})
        procs = 2 if scenario == "twoproc" else 1
        for n in ns:
            node, py = _by(records, scenario, NODE, n, procs), _by(records, scenario, PYSIO, n, procs)
            for ours_name in OURS:
                ours = _by(records, scenario, ours_name, n, procs)
                if ours is None:
                    continue
                o = (ours.get("peak") or {}).get("delivered_per_s") or 0.0
                nd = (node.get("peak") or {}).get("delivered_per_s") if node else None
                pd = (py.get("peak") or {}).get("delivered_per_s") if py else None
                ok = (nd is None or o >= nd) and (pd is None or o >= 3 * pd)
                crit = "peak msg/s ≥ Node and ≥ 3× python-socketio"
                if nd is not None:
                    crit += f" (ours/Node = {o / nd:.2f}×" if nd else " (Node 0"
                    crit += f", ours/py = {o / pd:.2f}×)" if pd else ")"
                out.append(f"| {scenario} | {_f(n)} | {ours_name} | {_f(o)} | {_f(nd)} | {_f(pd)} | {crit} | "
                           f"{'yes' if ok else '**no**'} |")
                recs = [x for x in (ours, node, py) if x is not None]
                rate, p99s = _common_p99(recs)
                if rate is not None:
                    po = p99s.get(ours_name)
                    others = [p99s.get(NODE), p99s.get(PYSIO)]
                    okp = po is not None and all(x is None or po <= x for x in others)
                    out.append(f"| {scenario} | {_f(n)} | {ours_name} | p99 {_f(po)} ms | p99 {_f(p99s.get(NODE))} ms | "
                               f"p99 {_f(p99s.get(PYSIO))} ms | p99 ≤ both, at {_f(rate)} events/s (highest rate all kept up "
                               f"with) | {'yes' if okp else '**no**'} |")
    node_idle = _by(records, "idle", NODE, _first_n(records, "idle"))
    for ours_name in OURS:
        ours = _by(records, "idle", ours_name, _first_n(records, "idle"))
        if ours and node_idle:
            o, nd = ours["idle"]["kb_per_connection"], node_idle["idle"]["kb_per_connection"]
            py = _by(records, "idle", PYSIO, _first_n(records, "idle"))
            crit = "RSS per idle connection < Node" + (
                "" if ours_name == "ours-ws" else " (the bar names WebSocket; shown for reference)")
            out.append(f"| idle | {_f(ours['n'])} | {ours_name} | {_f(o)} KB | {_f(nd)} KB | "
                       f"{_f(py['idle']['kb_per_connection']) if py else '–'} KB | {crit} | "
                       f"{'yes' if o is not None and nd is not None and o < nd else '**no**'} |")
    for ours_name in OURS:
        ours = _by(records, "resume", ours_name, _first_n(records, "resume"))
        node = _by(records, "resume", NODE, _first_n(records, "resume"))
        if ours:
            ms = ours["resume"]["ms"]
            out.append(f"| resume | {_f(ours['n'])} | {ours_name} | {_f(ms)} ms | "
                       f"{_f(node['resume']['ms']) + ' ms' if node else '–'} | not possible | "
                       f"replay all missed events < 50 ms | {'yes' if ms is not None and ms < 50 else '**no**'} |")
    return out


def _ms(lat: dict | None) -> str:
    lat = lat or {}
    return f"{_f(lat.get('p50_ms'))} / {_f(lat.get('p99_ms'))} / {_f(lat.get('p999_ms'))}"


def _acc(acc: dict | None) -> str:
    if not acc:
        return "–"
    verdict = "**exactly once, in order**" if acc.get("ok") else "**NOT exactly once / in order**"
    return (f"{verdict}: due {_f(acc['due'])}, missing {_f(acc['missing'])}, duplicates {_f(acc['duplicates_run'])}, "
            f"out of order {_f(acc['out_of_order_run'])}, foreign {_f(acc['foreign_run'])} "
            f"(redelivered ids, dropped by the client: {_f(acc['redelivered_run'])})")


def scale_tables(records: list[dict]) -> list[str]:
    """Issue 12: `scale` (N connections on several processes, mixed transports, real traffic shape)."""
    rows = _rows(records, "scale")
    if not rows:
        return ["(not run)"]
    out = ["| system | N | server procs | generator procs | connected | time to connect | connects/s (per generator) | "
           "KB/conn WS | KB/conn SSE | KB/conn poll | KB/conn all | idle server CPU % | p50 / p99 / p99.9 ms | "
           "server CPU % (steps: min–max) | delivered msg/s | 5xx | delivery |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            dashes = " – |" * 13
            out.append(f"| {r['system']} | {_f(r['n'])} | {r['processes']} |{dashes} {_fail_reason(r)} |")
            continue
        c, kb, steps = r["connect"], r["kb_per_conn"], r.get("steps", [])
        cpus = [s["server_cpu_pct"] for s in steps]
        dps = [s["delivered_per_s"] for s in steps if s.get("delivered_per_s") is not None]
        out.append(
            f"| {r['system']} | {_f(r['n'])} | {r['processes']} | {r['workers']} | {_f(c['connected'])} | "
            f"{_f(c['seconds'])} s | {_f(c['per_s'])} ({_f(c['per_s_per_generator'])}) | {_f(kb.get('ws'))} | "
            f"{_f(kb.get('sse'))} | {_f(kb.get('poll'))} | "
            f"{_f(kb.get('all'))} | {_f(r['idle_cpu_pct'])} | {_ms(r['latency'])} | "
            f"{_f(min(cpus)) if cpus else '–'}–{_f(max(cpus)) if cpus else '–'} | "
            f"{_f(sum(dps) / len(dps)) if dps else '–'} | {_f(r['http_5xx'])} | {_acc(r['accounting'])} |")
    out += ["", "Per step (after all are connected; presence churn on):", "",
            "| system | step | seconds | published | delivered msg/s | p50 / p99 / p99.9 ms | server CPU % | "
            "generators CPU % | Redis CPU % | server RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for s in r.get("steps", []):
            out.append(f"| {r['system']} | {s['step'] - 99} | {_f(s['seconds'])} | {_f(s['published'])} | "
                       f"{_f(s['delivered_per_s'])} | {_ms(s)} | {_f(s['server_cpu_pct'])} | {_f(s['gen_cpu_pct'])} | "
                       f"{_f(s['redis_cpu_pct'])} | "
                       f"{_f(s['server_rss_mb'])} |")
    out += ["", "On the way up (a short traffic window at each level; RSS per connection over all connected so far):", "",
            "| system | connections | KB/conn | p50 / p99 / p99.9 ms | server CPU % | delivered msg/s |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        for lv in r.get("levels", []):
            out.append(f"| {r['system']} | {_f(lv['connected'])} | {_f(lv['kb_per_conn'])} | {_ms(lv)} | "
                       f"{_f(lv['server_cpu_pct'])} | {_f(lv['delivered_per_s'])} |")
    out += [""]
    for r in rows:
        if r.get("status") != "ok":
            continue
        m, pub = r["model"], r["publisher"]
        ing = r.get("ingest") or {}
        out.append(f"- {r['system']}: model {m}; published {_f(pub['published'])} ({pub['by_kind']}, "
                   f"paths {pub['by_path']}), "
                   f"HTTP answers {pub.get('counters', {}).get('http_status', {})}; presence events received "
                   f"{_f(r['presence_events'])}, snapshots {_f(r['snapshots'])}, churn moves {_f(r['churns'])}; "
                   f"connect failures {r['connect']['failures'] or 'none'}; drops {r['drops'] or 'none'}; "
                   f"close codes {r['close_codes'] or 'none'}"
                   + (f"; ingest: {ing.get('rejected', 0)} entries rejected, e.g. "
                      f"{[e.get('reason') for e in ing.get('rejected_first', [])]}" if ing else "")
                   + (f"; server log error lines {r['server_log']['lines']}: {r['server_log']['first'][:2]}"
                      if r.get("server_log", {}).get("lines") else "") + ".")
    return out


def storm_table(records: list[dict]) -> list[str]:
    rows = _rows(records, "storm")
    if not rows:
        return ["(not run)"]
    out = ["| system | N | processes (after) | victims | resumed | resume median / p99 / last ms | "
           "reconnect attempts median / max | 5xx | refused / reset | close codes | survivors' RSS MB before → after | "
           "p50 / p99 / p99.9 ms | delivery during the storm |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            dashes = " – |" * 9
            out.append(f"| {r['system']} | {_f(r['n'])} | {r['processes']} |{dashes} {_fail_reason(r)} |")
            continue
        rec = f"; Socket.IO recovery: {r['sio_recovery']}" if r.get("sio_recovery") else ""
        out.append(
            f"| {r['system']} | {_f(r['n'])} | {r['processes']} ({r['survivor_processes']}) | {_f(r['victims'])} | "
            f"{_f(r['resumed'])} | "
            f"{_f(r['resume_median_ms'])} / {_f(r['resume_p99_ms'])} / {_f(r['resume_last_ms'])} | "
            f"{_f(r['attempts_median'])} / {_f(r['attempts_max'])} | {_f(r['http_5xx'])} | {_f(r['refused_or_reset'])} "
            f"({r['connect_failures'] or 'none'}) | {r['close_codes'] or 'none'} | {_f(r['survivor_rss_mb_total_before'])} → "
            f"{_f(r['survivor_rss_mb_total_after'])} | {_ms(r['latency'])} | {_acc(r['accounting'])}{rec} |")
    return out


def scale_chart(path: Path, records: list[dict]) -> bool:
    """RSS per connection and p99 against connections (the scale ramp), per system."""
    rows = [r for r in _rows(records, "scale") if r.get("status") == "ok" and r.get("levels")]
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        xs = [lv["connected"] for lv in r["levels"]]
        a1.plot(xs, [lv["kb_per_conn"] for lv in r["levels"]], marker="o", label=r["system"])
        a2.plot(xs, [lv.get("p99_ms") for lv in r["levels"]], marker="o", label=r["system"])
    a1.set_title("Server RSS per connection (all processes)")
    a1.set_xlabel("connections")
    a1.set_ylabel("KB")
    a2.set_title("publish → receive p99 at the traffic shape")
    a2.set_xlabel("connections")
    a2.set_ylabel("ms")
    a2.set_yscale("log")
    a1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _first_n(records: list[dict], scenario: str) -> int | None:
    rows = _rows(records, scenario)
    return rows[0]["n"] if rows else None


def validity(records: list[dict]) -> list[str]:
    notes = []
    for r in records:
        tag = f"{r['scenario']} {r['system']} N={r['n']} procs={r['processes']}"
        if r.get("status") == "error":
            notes.append(f"- {tag}: **error** — {r.get('error', '')[:300]}")
        if _gen_bound(r):
            notes.append(f"- {tag}: the generator passed 90% of its core at the step shown; that step is invalid and the score "
                         "is a lower bound.")
        conn = r.get("connect")
        if conn and conn.get("connected") != conn.get("requested"):
            notes.append(f"- {tag}: only {conn.get('connected')} of {conn.get('requested')} clients connected "
                         f"({conn.get('first_failures')}).")
        if r.get("http_errors"):
            notes.append(f"- {tag}: the server answered {r['http_errors']:,} polls with HTTP 5xx (retried by the client "
                         f"after 0.2 s; first: {[e for e in r.get('errors', []) if '5xx' in e][:1]})")
        noisy = [s for s in r.get("steps", []) if s.get("other_cpu_pct", 0) > 20]
        if noisy:
            worst = max(noisy, key=lambda s: s["other_cpu_pct"])
            notes.append(f"- {tag}: other processes on the machine used up to {worst['other_cpu_pct']}% CPU during "
                         f"{len(noisy)} of {len(r.get('steps', []))} steps (e.g. at {_f(worst['rate'])}/s): those numbers "
                         "are pessimistic.")
        for n in r.get("notes", []):
            notes.append(f"- {tag}: {n}")
    return notes or ["- none"]


def write(out: Path, records: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(orjson.dumps({"meta": meta, "records": records}, option=orjson.OPT_INDENT_2))
    chart_ok = chart(out / "chart.png", records, str(meta.get("date", ""))[:10])
    m, v = meta["machine"], meta["versions"]
    # the hand-written findings belong to the committed results only, not to a smoke run elsewhere
    notes_path = out / NOTES
    lines = [
        "# Benchmarks: this service vs Socket.IO (Node) vs python-socketio",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} (took {meta['duration_s'] / 60:.1f} min)."
        + (" **Smoke run: tiny N and short steps; the numbers only show that the harness works.**" if meta.get("smoke") else ""),
        *[f"The scale/storm records come from `{run['command']}` on {run['date']} (code {run['commit']})." for run in
          meta.get("scale_runs", [])],
        "",
        (f"**Code under test:** {meta['commit']}.  \n" if meta.get("commit") else "")
        + f"**Machine:** {m['nproc']} × {m['cpu_model']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}.  ",
        "**Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "**Method.** Each system runs alone on core 0 (`sched_setaffinity`); the load generator (one process, asyncio + "
        "uvloop, raw protocol clients) runs on core 1; Redis is the machine's shared instance (not pinned). Every system "
        "is published to through Redis the same way: the generator `XADD`s the event (same ~100-byte data, stamped with "
        "`time_ns()`) to the system's publish stream — our service's own worker ingest stream (`rt:ingest`), and for the "
        "Socket.IO servers a stream each server process reads in a consumer group and emits to the room from; so every "
        "event goes publisher → Redis → server → Redis (our log append / the Streams adapter's XADD / python-socketio's "
        "PUB/SUB) → clients. Latency is receive `time_ns()` minus the stamp. Rates double from a start (fan-out: "
        f"{meta['plan']['fanout_start_deliveries']:g} deliveries/s) for {meta['plan']['step_seconds']:g} s per step "
        f"until a step fails (p99 > {meta['plan']['p99_ms']:g} ms or under 99.9% delivered within the drain time), "
        f"then bisect {meta['plan']['bisect']}×; "
        "the score is the highest rate held. CPU and RSS come from /proc (100% = one core). A step where the generator "
        "used more than 90% of its core is invalid.",
        "",
        "## Against the bar (issue 3)",
        "",
        *bar_table(records),
        "",
        "## Fan-out: N clients on one tenant channel (score in events/s, each delivered to all N)",
        "",
        *stepped_table(records, "fanout", "events/s"),
        "",
        "## Targeted: N clients each on its own user channel (score in events/s, each delivered once)",
        "",
        *stepped_table(records, "targeted", "events/s"),
        "",
        "## Idle: RSS per idle connection",
        "",
        *idle_table(records),
        "",
        "## Resume: replay a client's missed events from inside a large unrelated backlog",
        "",
        *resume_table(records),
        "",
        "## One vs two server processes (fan-out)",
        "",
        "Two processes take both cores, so the generator shares core 1 with the second server process: compare the "
        "servers' CPU and the generator's share before reading the scores.",
        "",
        *stepped_table(records, "twoproc", "events/s"),
        "",
        "## Scale: many connections, several processes, the product's traffic shape (issue 12)",
        "",
        "Method: bench/scale.py and bench/swarm.py (module docstrings). All server processes on core 0; all generator "
        "processes, the publisher and the orchestrator on core 1; CPU 100% = one core.",
        "",
        *scale_tables(records),
        "",
        *(["![scale](scale.png)", ""] if scale_chart(out / "scale.png", records) else []),
        "## Storm: one server process SIGKILLed under load",
        "",
        *storm_table(records),
        "",
        "## Validity notes",
        "",
        *validity(records),
        "",
        "![chart](chart.png)" if chart_ok else "(chart not drawn: matplotlib missing)",
        "",
    ]
    if notes_path.exists():
        lines += [notes_path.read_text().rstrip(), ""]
    (out / "RESULTS.md").write_text("\n".join(lines))


def chart(path: Path, records: list[dict], date: str = "") -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = list(SYSTEMS)
    colors = {"ours-ws": "#1f77b4", "ours-sse": "#4c9be8", "ours-poll": "#9ecae1", NODE: "#2ca02c", PYSIO: "#d62728"}
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))

    def grouped(ax, scenario: str, key, title: str, ylabel: str, log: bool = False) -> None:  # type: ignore[no-untyped-def]
        rows = [r for r in _rows(records, scenario) if r.get("status") == "ok"]
        ns = sorted({r["n"] for r in rows})
        width = 0.8 / len(systems)
        for j, s in enumerate(systems):
            vals = []
            for n in ns:
                r = next((x for x in rows if x["system"] == s and x["n"] == n), None)
                vals.append(key(r) if r else 0)
            ax.bar([i + j * width for i in range(len(ns))], [v or 0 for v in vals], width, label=s, color=colors[s])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ns))], [f"N={n:,}" for n in ns])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log and any(p.get_height() > 0 for p in ax.patches):
            ax.set_yscale("log")

    peak = lambda r: (r.get("peak") or {}).get("delivered_per_s")  # noqa: E731
    first_p99 = lambda r: (r.get("steps") or [{}])[0].get("p99_ms")  # noqa: E731
    grouped(axes[0][0], "fanout", peak, "Fan-out: peak delivered msg/s", "messages/s")
    grouped(axes[0][1], "fanout", first_p99, "Fan-out: p99 at the first (lowest) rate, ms", "ms", log=True)
    grouped(axes[0][2], "targeted", peak, "Targeted: peak delivered msg/s", "messages/s")
    grouped(axes[1][0], "idle", lambda r: r.get("idle", {}).get("kb_per_connection"), "Idle: RSS per connection", "KB")
    grouped(axes[1][1], "resume", lambda r: r.get("resume", {}).get("ms"), "Resume: time to replay all missed (ms)", "ms",
            log=True)
    grouped(axes[1][2], "twoproc", peak, "Two processes: fan-out peak msg/s", "messages/s")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"forge-realtime benchmarks — {date or dt.date.today().isoformat()}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
