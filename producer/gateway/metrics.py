"""Gateway metrics (Prometheus), served at ``GET /metrics``.

Labels are bounded: the route *template* (``/v1/turns/{turn_id}``, or ``unmatched``),
the method (known verbs, else ``other``) and the status code.  No session, turn or
user id is ever a label (cardinality, and I10).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "turnq_http_requests_total",
    "HTTP requests answered by the gateway, by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "turnq_gateway_request_seconds",
    "Time to answer a request (event streams excluded: they last as long as their turn).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RATE_LIMITED = Counter(
    "turnq_gateway_rate_limited_total", "Requests refused with 429 by the per-user rate limit."
)
STREAMS = Gauge("turnq_gateway_event_streams", "Server-Sent Event streams open now.")

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
