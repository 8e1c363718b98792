"""Prometheus metrics of the operator and its readiness, served on --metrics-port (/metrics, /readyz)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    MetricsHandler,
    disable_created_metrics,
)

# No `<name>_created` gauge beside each counter and histogram: a process start time per series that no alert
# of ours reads, doubling the series scraped (prometheus_client's switch is process-wide).
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client 0.26

REGISTRY = CollectorRegistry()

ALLOCATIONS = Counter(
    "dra_operator_allocations", "Pods whose claims were allocated and which were ungated", registry=REGISTRY
)
FAILURES = Counter(
    "dra_operator_allocation_failures",
    "Allocation attempts that left a Pod gated, by reason (the event reason)",
    ["reason"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "dra_operator_allocation_latency_seconds",
    "From the moment this replica first sees a gated Pod to its ungating patch",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
SYNC_SECONDS = Histogram(
    "dra_operator_pod_sync_seconds",
    "Time spent in one Pod's reconcile step (claims, allocation, writes)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
ADMISSION_SECONDS = Histogram(
    "dra_operator_admission_review_seconds",
    "Time this replica took to answer one admission review, by webhook path",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
WAITING = Gauge("dra_operator_pods_waiting", "Pods still gated by the operator", registry=REGISTRY)
WRITES = Counter(
    "dra_operator_api_writes", "API writes made by the operator", ["verb", "resource"], registry=REGISTRY
)
RATE_LIMITED = Counter(
    "dra_operator_rate_limited_seconds",
    "Seconds the operator's API requests waited for its client rate limit (--kube-api-qps), in all, by "
    "client (`placement`: everything but events; `events`: the event recorder's own)",
    ["client"],
    registry=REGISTRY,
)
EVENTS_DROPPED = Counter(
    "dra_operator_events_dropped",
    "Events not posted because the queue of events waiting to be posted was full, by type",
    ["type"],
    registry=REGISTRY,
)
RELEASES = Counter(
    "dra_operator_deallocations", "Claims deallocated after their last consumer left", registry=REGISTRY
)
READY = Gauge(
    "dra_operator_ready",
    "1 while the caches are filled and the API server answers (0 before, and while it is unreachable)",
    registry=REGISTRY,
)
REACHABLE = Gauge(
    "dra_operator_apiserver_reachable", "1 while the API server answers this replica", registry=REGISTRY
)
REJECTED_WRITES = Counter(
    "dra_operator_rejected_writes",
    "Writes the API server refused for good (400, 403, 422 Invalid), by HTTP status; retried with backoff",
    ["status"],
    registry=REGISTRY,
)
CONFIGURED = Gauge(
    "dra_operator_webhook_configured",
    "1 once this replica applied the webhook configuration",
    registry=REGISTRY,
)
LEADER = Gauge("dra_operator_leader", "1 while this replica holds the leader Lease", registry=REGISTRY)


class _Handler(MetricsHandler):
    """/readyz: 200 while READY is 1, else 503, for the readiness probe (Kopf's /healthz serves liveness and
    must not fail while the API server is away, or the kubelet would restart a replica that only waits).
    Every other path: the metrics."""

    registry = REGISTRY

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/readyz":
            super().do_GET()
            return
        ready = REGISTRY.get_sample_value("dra_operator_ready") == 1.0
        body = b"ok\n" if ready else b"not ready: caches cold or the API server unreachable\n"
        self.send_response(200 if ready else 503)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, addr: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Start the /metrics and /readyz HTTP endpoint (a daemon thread)."""
    if not port:
        return None
    server = ThreadingHTTPServer((addr, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
