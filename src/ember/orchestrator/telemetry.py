"""What the daemon tells its operator: one structured log line per lifecycle event, and Prometheus metrics.

Log lines are JSON objects on stderr (``time``, ``level``, ``logger``, ``message``, and for
sandbox events ``sandbox_id``, ``event`` and the event's fields), so a log shipper needs no
parsing rules. Metrics are served as Prometheus text at ``/metrics``:

    ember_sandboxes_running                    gauge     sandboxes in RUNNING
    ember_sandbox_starts_total{kind}           counter   kind = resume | boot
    ember_sandbox_start_failures_total         counter
    ember_sandbox_start_seconds                histogram Create, request to RUNNING
    ember_sandbox_pauses_total                 counter   pauses and checkpoints
    ember_sandbox_pause_seconds                histogram
    ember_sandbox_failures_total               counter   sandboxes failed while running (VM died ...)
    ember_page_faults_served_total             counter   memory faults served, over running sandboxes
    ember_memory_read_bytes_total              counter   guest memory loaded lazily from builds
    ember_chunk_fetches_total                  counter   4 MiB chunks fetched from remote storage
    ember_grpc_errors_total{method,code}       counter
    ember_proxy_requests_total{outcome}        counter   the node proxy's answers
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ember.sandbox import SandboxEvent, UsageReport

_events_log = logging.getLogger("ember.events")

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double every counter and say nothing an operator uses

START_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra`` fields of sandbox events become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "ember", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for everything the daemon logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_event(event: SandboxEvent) -> None:
    """The event sink of the daemon's node: every lifecycle step, one line, with the sandbox id."""
    level = (
        logging.WARNING
        if event.name in ("failed", "kill-failed", "slot-leak", "cleanup-problem")
        else logging.INFO
    )
    fields = {"sandbox_id": event.sandbox_id, "event": event.name, **dict(event.fields)}
    _events_log.log(level, event.message, extra={"ember": fields})


class Metrics:
    """The daemon's metrics; counters are updated by the service, totals over sandboxes at scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.starts = Counter("ember_sandbox_starts", "Sandboxes started", ["kind"], registry=self.registry)
        self.start_failures = Counter(
            "ember_sandbox_start_failures", "Sandbox starts that failed", registry=self.registry
        )
        self.start_seconds = Histogram(
            "ember_sandbox_start_seconds",
            "Create to running",
            buckets=START_BUCKETS_S,
            registry=self.registry,
        )
        self.pauses = Counter("ember_sandbox_pauses", "Pauses and checkpoints", registry=self.registry)
        self.pause_seconds = Histogram(
            "ember_sandbox_pause_seconds",
            "Pause to a complete build",
            buckets=START_BUCKETS_S,
            registry=self.registry,
        )
        self.failures = Counter(
            "ember_sandbox_failures", "Sandboxes that failed while running", registry=self.registry
        )
        self.grpc_errors = Counter(
            "ember_grpc_errors",
            "gRPC calls answered with an error",
            ["method", "code"],
            registry=self.registry,
        )

    def watch(
        self,
        running: Callable[[], int],
        usages: Callable[[], dict[str, UsageReport]],
        proxy_outcomes: Callable[[], dict[str, int]],
    ) -> None:
        """Register the values read at scrape time (``usages``: the running sandboxes' reports by id)."""
        self.registry.register(_ScrapeCollector(running, usages, proxy_outcomes))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeCollector(Collector):
    """Totals over the sandboxes' own counts; what an ended sandbox had counted stays in the total."""

    def __init__(
        self,
        running: Callable[[], int],
        usages: Callable[[], dict[str, UsageReport]],
        proxy_outcomes: Callable[[], dict[str, int]],
    ) -> None:
        self._running = running
        self._usages = usages
        self._proxy_outcomes = proxy_outcomes
        self._lock = threading.Lock()
        self._last: dict[str, UsageReport] = {}
        self._retired = [0, 0, 0]

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("ember_sandboxes_running", "Sandboxes running", value=self._running())
        current = self._usages()
        with self._lock:
            for sandbox_id, report in self._last.items():
                if sandbox_id not in current:
                    self._retired = [a + b for a, b in zip(self._retired, _counts(report), strict=True)]
            self._last.update(current)
            for sandbox_id in [key for key in self._last if key not in current]:
                del self._last[sandbox_id]
            totals = list(self._retired)
            for report in self._last.values():
                totals = [a + b for a, b in zip(totals, _counts(report), strict=True)]
        yield CounterMetricFamily("ember_page_faults_served", "Memory faults served", value=totals[0])
        yield CounterMetricFamily("ember_memory_read_bytes", "Guest memory loaded lazily", value=totals[1])
        yield CounterMetricFamily(
            "ember_chunk_fetches", "Chunks fetched from remote storage", value=totals[2]
        )
        requests = CounterMetricFamily("ember_proxy_requests", "Node proxy answers", labels=["outcome"])
        for outcome, count in sorted(self._proxy_outcomes().items()):
            requests.add_metric([outcome], count)
        yield requests


def _counts(report: UsageReport) -> list[int]:
    return [report.faults_served, report.memory_read_bytes, report.chunks_fetched]
