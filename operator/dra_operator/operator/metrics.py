"""Prometheus metrics of the operator, served on --metrics-port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
WAITING = Gauge("dra_operator_pods_waiting", "Pods still gated by the operator", registry=REGISTRY)
WRITES = Counter(
    "dra_operator_api_writes", "API writes made by the operator", ["verb", "resource"], registry=REGISTRY
)
RELEASES = Counter(
    "dra_operator_deallocations", "Claims deallocated after their last consumer left", registry=REGISTRY
)
READY = Gauge(
    "dra_operator_ready", "1 once the caches are filled (admission is served from then on)", registry=REGISTRY
)
CONFIGURED = Gauge(
    "dra_operator_webhook_configured",
    "1 once this replica applied the webhook configuration",
    registry=REGISTRY,
)
LEADER = Gauge("dra_operator_leader", "1 while this replica holds the leader Lease", registry=REGISTRY)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP endpoint (a daemon thread)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
