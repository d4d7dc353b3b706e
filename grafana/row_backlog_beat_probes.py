"""Adds (or replaces) the row "Backlog, beat and worker probes" at the bottom of grafana/dashboards/celery.json.

    python grafana/row_backlog_beat_probes.py

Its panels have ids 101-112; the script first removes any panel with an id in that range, so
running it again (e.g. after the dashboard was regenerated) leaves exactly one copy of the row.
"""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "celery.json"
IDS = range(101, 113)
PROM = {"type": "prometheus", "uid": "prometheus"}
TEMPO = {"type": "tempo", "uid": "tempo"}


def traces_table(pid: int, title: str, description: str, grid: tuple[int, int, int, int], query: str) -> dict:
    x, y, w, h = grid
    return {
        "id": pid, "type": "table", "title": title, "description": description, "datasource": TEMPO,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": [{"refId": "A", "datasource": TEMPO, "queryType": "traceql", "query": query, "limit": 20,
                     "tableType": "traces"}],
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
    }


def target(ref: str, expr: str, legend: str, instant: bool = False) -> dict:
    return {"refId": ref, "datasource": PROM, "expr": expr, "legendFormat": legend, "range": not instant,
            "instant": instant, "editorMode": "code"}


def timeseries(pid: int, title: str, description: str, grid: tuple[int, int, int, int], targets: list[dict],
               unit: str = "short") -> dict:
    x, y, w, h = grid
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description, "datasource": PROM,
        "gridPos": {"h": h, "w": w, "x": x, "y": y}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                               "showPoints": "never", "spanNulls": False},
                                     "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(pid: int, title: str, description: str, grid: tuple[int, int, int, int], targets: list[dict], unit: str,
         red_above: float, no_value: str) -> dict:
    x, y, w, h = grid
    steps = [{"color": "green", "value": None}, {"color": "red", "value": red_above}]
    return {
        "id": pid, "type": "stat", "title": title, "description": description, "datasource": PROM,
        "gridPos": {"h": h, "w": w, "x": x, "y": y}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "noValue": no_value, "color": {"mode": "thresholds"},
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "orientation": "auto",
                    "colorMode": "background", "graphMode": "none", "justifyMode": "auto",
                    "textMode": "value_and_name", "wideLayout": True},
    }


def panels(y: int) -> list[dict]:
    q = 'queue=~"$queue"'
    return [
        {"id": 101, "type": "row", "title": "Backlog, beat and worker probes", "collapsed": False,
         "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []},
        timeseries(102, "Backlog by queue: waiting, delivered-unacked, ETA-held",
                   "What celery_queue_length hides (otel-agensium monitor, Redis): messages delivered to workers "
                   "and not acknowledged (prefetched; running ones too with task_acks_late) and, of those, tasks "
                   "held for a future ETA/countdown. Backlog = waiting + unacked - ETA-held.",
                   (0, y + 1, 12, 8), [
                       target("A", f"max by (queue) (celery_queue_length{{{q}}})", "waiting {{queue}}"),
                       target("B", f"max by (queue) (celery_queue_unacked{{{q}}})", "unacked {{queue}}"),
                       target("C", f"max by (queue) (celery_queue_eta_held{{{q}}})", "ETA-held {{queue}}"),
                       target("D", f"max by (queue) (celery_queue_backlog{{{q}}})", "backlog {{queue}}"),
                   ]),
        timeseries(103, "Load: backlog per pool slot of the consuming workers",
                   "celery_queue_load = celery_queue_backlog / celery_queue_consumer_concurrency: what a scaler "
                   "(KEDA) should target; above 1 every slot has a task waiting. Absent when no worker consumes "
                   "the queue (scale from zero on celery_queue_backlog).",
                   (12, y + 1, 12, 8), [
                       target("A", f"max by (queue) (celery_queue_load{{{q}}})", "load {{queue}}"),
                       target("B", f"max by (queue) (celery_queue_consumer_concurrency{{{q}}})",
                              "pool slots {{queue}}"),
                   ]),
        timeseries(104, "Oldest waiting message",
                   "Age of the oldest message still in the broker, per queue: from the agensium_sent_at header, "
                   "or since the monitor first saw it at the tail of its list (publisher not instrumented). "
                   "Alert CeleryQueueOldestMessageTooOld.",
                   (0, y + 9, 12, 8), [
                       target("A", f"max by (queue) (celery_queue_oldest_message_age_seconds{{{q}}})", "{{queue}}"),
                   ], unit="s"),
        timeseries(105, "ETA/countdown tasks held per worker",
                   "celery_worker_eta_tasks: tasks each worker keeps (unacknowledged) until their ETA. On Redis a "
                   "task held longer than visibility_timeout is delivered twice: doctor check eta.",
                   (12, y + 9, 12, 8), [
                       target("A", f"sum by (worker, queue) (celery_worker_eta_tasks{{{q}}})", "{{worker}} {{queue}}"),
                   ]),
        stat(106, "Beat: seconds past its promised wake-up",
             "time() minus the time beat's last tick promised to wake up (celery_beat_next_tick_timestamp_seconds, "
             "read back over 6 h). Negative or small: beat runs. Alert CeleryBeatDown above 60 s.",
             (0, y + 17, 6, 8), [
                 target("A", "time() - max(max_over_time(celery_beat_next_tick_timestamp_seconds[6h]))", "beat",
                        instant=True),
             ], unit="s", red_above=60, no_value="no beat reports"),
        timeseries(107, "Beat: seconds until each entry is due (negative: late)",
                   "celery_beat_entry_next_due_timestamp_seconds - time(): an entry below -60 s has not been sent "
                   "within its period plus the tolerance (alert CeleryBeatMissedRun; doctor check beat).",
                   (6, y + 17, 9, 8), [
                       target("A", "max by (entry) (celery_beat_entry_next_due_timestamp_seconds) - time()",
                              "{{entry}}"),
                   ], unit="s"),
        timeseries(108, "Beat: lag of each entry's last send",
                   "celery_beat_entry_lag_seconds: when beat sent the entry's last run minus when it was due.",
                   (15, y + 17, 9, 8), [
                       target("A", "max by (entry) (celery_beat_entry_lag_seconds)", "{{entry}}"),
                   ], unit="s"),
        timeseries(109, "Beat: sends and failed sends per entry (5m)",
                   "celery_beat_sends_total and celery_beat_send_errors_total by schedule entry.",
                   (0, y + 25, 12, 8), [
                       target("A", "sum by (entry) (increase(celery_beat_sends_total[5m]))", "sent {{entry}}"),
                       target("B", "sum by (entry) (increase(celery_beat_send_errors_total[5m]))",
                              "failed {{entry}}"),
                   ]),
        timeseries(110, "Workers ready (their /readyz)",
                   "celery_worker_ready: 1 while a worker consumes from the broker, 0 while it reconnects "
                   "(AGENSIUM_WORKER_PROBE_PORT). What the kubelet's readiness probe sees.",
                   (12, y + 25, 12, 8), [
                       target("A", "min by (worker) (celery_worker_ready)", "{{worker}}"),
                   ]),
        traces_table(111, "Chords: callbacks linked to every header task (Tempo)",
                     "Traces with a chord callback run (celery.chord_group_id). Open one: the callback's span "
                     "links lead to each header task's run, so the member that held the chord up is one click "
                     "away. Chains nest in order, group members are siblings.",
                     (0, y + 33, 12, 9), '{ span.celery.chord_group_id != "" }'),
        traces_table(112, "Workflow of the task_id variable (Tempo)",
                     "Every run whose celery.root_id is the task_id variable: the whole chain/group/chord the "
                     "task started (type a root task id in task_id).",
                     (12, y + 33, 12, 9), '{ span.celery.root_id = "${task_id}" }'),
    ]


def main() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    kept = [p for p in dashboard["panels"] if p["id"] not in IDS]
    bottom = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in kept), default=0)
    dashboard["panels"] = kept + panels(bottom)
    DASHBOARD.write_text(json.dumps(dashboard, indent=2) + "\n")


if __name__ == "__main__":
    main()
