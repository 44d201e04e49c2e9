"""Spans of the functions a Python worker runs, exported over OTLP/gRPC.

Off unless OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is
set (and neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none), as the
Rust worker and the server do. Each call's span is a child of the server's
dispatch span, whose W3C `traceparent` comes with the invocation; it is named
after the function and carries the invocation's ids. Spans are batched and
exported on a thread of the OpenTelemetry SDK; `shutdown` sends the rest.

The worker runs without the OpenTelemetry packages when tracing is off; the
`tracing` extra (`pip install './functions/python[tracing]'`) installs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Optional

log = logging.getLogger("stoa_worker")


def _wanted() -> bool:
    endpoint = any(os.environ.get(k, "").strip()
                   for k in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    none = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
    return endpoint and not disabled and not none


class Tracing:
    """The worker's tracer; every method is a no-op when tracing is off."""

    def __init__(self, service_name: str):
        self._provider = None
        self._tracer = None
        if not _wanted():
            return
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as error:
            log.warning(
                "traces not exported: the OpenTelemetry packages are missing (%s); install stoa-worker[tracing]", error
            )
            return
        service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("stoa_worker")
        self._propagator = TraceContextTextMapPropagator()

    @property
    def exporting(self) -> bool:
        return self._tracer is not None

    def function_span(self, ctx: Any) -> Any:
        """A context manager around one call: the span of `ctx`'s function,
        child of the invocation's `traceparent` (a malformed one starts a new
        trace; the propagator validates it)."""
        if self._tracer is None:
            return contextlib.nullcontext(None)
        from opentelemetry.trace import SpanKind
        carrier = {"traceparent": ctx.traceparent} if ctx.traceparent else {}
        parent = self._propagator.extract(carrier)
        return self._tracer.start_as_current_span(
            ctx.function,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "stoa.function": ctx.function,
                "stoa.invocation": ctx.invocation_id,
                "stoa.workflow": ctx.workflow_id,
                "stoa.attempt": ctx.attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        )

    @staticmethod
    def outcome(span: Any, outcome: str, error: Optional[str] = None) -> None:
        """Records how the call ended on its span (None when off)."""
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode
        span.set_attribute("stoa.outcome", outcome)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))

    def shutdown(self) -> None:
        """Exports the spans still batched."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self._tracer = None
