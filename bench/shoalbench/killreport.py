"""The kill test's section of docs/BENCHMARKS.md, from docs/KILL.json (written by a full
`python3 bench/kill.py` run; the bench report re-renders it on every rewrite)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import ROOT

RECORD = ROOT / "docs" / "KILL.json"
# The cluster form's (python3 bench/cluster_kill.py).
CLUSTER_RECORD = ROOT / "docs" / "KILL-CLUSTER.json"
HEADING = "## kill test"
CLUSTER_HEADING = "## cluster kill test"


def load(path: Path = RECORD) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def section(res: dict | None) -> str:
    if not res:
        return ""
    a = res["acknowledged"]
    s = res["schedule"]
    lat = res["ack_to_delivery_ms"]
    injected = res["injected_failures"]
    moments = ", ".join(f"{k} {v}" for k, v in sorted(res["kills_by_moment"].items(), key=lambda kv: -kv[1]))
    out = [
        "## kill test\n",
        f"`{res['command']}` on {res['date'][:10]} ({res.get('build', 'release')} build): "
        "`kill -9` of `shoal serve` at random and aimed moments while senders run, a restart "
        "on the same data directory after each; a function records every id it is handed in a "
        "ledger outside Shoal. What the numbers mean: docs/RELIABILITY.md, \"Events: what an "
        "acknowledgement promises\".\n",
        "| kills | acknowledged messages | acknowledged async invokes | lost | duplicate ids "
        "(extra deliveries) | unacknowledged (delivered anyway) | instance processes killed "
        f"with the daemon: outlived it by {res.get('orphan_patience_s', 3):g} s / survived the "
        "next start | time |",
        "|---|---|---|---|---|---|---|---|",
        f"| {res['kills']} | {a.get('queue', 0):,} | {a.get('async', 0):,} | **{res['lost']}** | "
        f"{res['duplicate_ids']:,} ({res['duplicate_deliveries']:,}) | "
        f"{res['unacknowledged']:,} ({res['unacknowledged_but_delivered']:,}) | "
        f"{res['processes_under_killed_daemons']:,}: {len(res.get('outlived_kill', []))} / "
        f"{len(res['orphans'])} | "
        f"{res['elapsed_s'] / 60:.1f} min |",
        "",
        f"Kill moments: {moments}. Injected handler failures (each retried by Shoal): "
        f"{injected.get('queue', 0)} queue batches, {injected.get('async', 0)} async events. "
        f"Schedules ({s.get('schedules', 1)}, each every minute): {s['fire_times']} fires, "
        f"{s['deliveries']} deliveries, fired twice {len(s['times_fired_twice'])}, skipped "
        f"{len(s['gaps_over_90s'])}. "
        f"Acknowledgement to first delivery: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max "
        f"{lat['max']} ms. Start to listening: median {res['start_to_ready_ms']['median']} ms, "
        f"max {res['start_to_ready_ms']['max']} ms.\n",
    ]
    if res["lost"]:
        out.append(
            f"Lost: {', '.join(res['lost_ids'][:20])}{' …' if res['lost'] > 20 else ''} "
            "(why: docs/RELIABILITY.md, \"What the kill test found\").\n"
        )
    return "\n".join(out)


def cluster_section(res: dict | None) -> str:
    if not res:
        return ""
    a = res["acknowledged"]
    lat = res["ack_to_delivery_ms"]
    by_node = ", ".join(f"{k} {v}" for k, v in sorted(res["kills_by_node"].items()))
    rejoined = (
        "after the drain every node saw all three live and served the route"
        if res.get("rejoin_error") is None
        else f"rejoin failed: {res['rejoin_error']}"
    )
    out = [
        f"{CLUSTER_HEADING}\n",
        f"`{res['command']}` on {res['date'][:10]} ({res['build']} build): three `shoal serve "
        "--cluster` nodes on one `nats-server -js`; SQS batches and `Event` invokes sent to "
        "nodes at random and HTTP calls on the nodes up, while one node at a time is `kill "
        "-9`ed and started again on its data directory; the kill test's function and ledger "
        "(above) count every id delivered.\n",
        "| kills (per node) | acknowledged messages | acknowledged async invokes | lost | "
        "duplicate ids (extra deliveries) | unacknowledged (delivered anyway) | HTTP calls "
        "(failed) | time |",
        "|---|---|---|---|---|---|---|---|",
        f"| {res['kills']} ({by_node}) | {a.get('queue', 0):,} | {a.get('async', 0):,} | "
        f"**{res['lost']}** | {res['duplicate_ids']:,} ({res['duplicate_deliveries']:,}) | "
        f"{res['unacknowledged']:,} ({res['unacknowledged_but_delivered']:,}) | "
        f"{res['http_calls']:,} ({res['http_failed']:,}) | {res['elapsed_s'] / 60:.1f} min |",
        "",
        f"Rejoin: {rejoined}{restart_text(res)}. Injected handler failures (each retried by Shoal): "
        f"{res.get('injected_failures', {}).get('queue', 0)} queue batches. Acknowledgement to first delivery: p50 {lat['p50']} ms, p99 "
        f"{lat['p99']} ms, max {lat['max']} ms (a killed node's SQS messages come back after "
        "their visibility timeout, 5 s; its async events after the internal lease, 30 s). "
        "Failed HTTP calls are those in flight on a killed node or sent to it as it died.\n",
    ]
    if res["lost"]:
        out.append(f"Lost: {', '.join(res['lost_ids'][:20])}{' …' if res['lost'] > 20 else ''}.\n")
    return "\n".join(out)


def restart_text(res: dict) -> str:
    r = res.get("restart_to_live_ms")
    if not r or r.get("median") is None:
        return ""
    return (
        f"; a restarted node was live in the others' view a median {r['median']} ms after its "
        f"start (max {r['max']} ms; {r['restarts_not_seen_in_60s']} restarts not seen within 60 s)"
    )


def splice(markdown: str, section_text: str, heading: str = HEADING) -> str:
    """`markdown` with its section under `heading` replaced by `section_text` (appended if
    it has none): a kill run updates docs/BENCHMARKS.md without re-rendering the rest."""
    start = markdown.find(f"\n{heading}\n")
    if start < 0:
        return markdown.rstrip("\n") + "\n\n" + section_text.rstrip("\n") + "\n"
    end = markdown.find("\n## ", start + 1)
    rest = markdown[end:] if end >= 0 else ""
    return markdown[: start + 1] + section_text.rstrip("\n") + "\n" + rest
