"""The benchmark's FastAPI app; BENCH_VARIANT picks the telemetry: none, plain, agensium."""

import os

VARIANT = os.environ.get("BENCH_VARIANT", "none")

if VARIANT == "plain":  # what opentelemetry-instrument with opentelemetry-distro sets up
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]))
    FastAPIInstrumentor().instrument()
    CeleryInstrumentor().instrument()
    RedisInstrumentor().instrument()
elif VARIANT == "agensium":
    import otel_agensium

    otel_agensium.configure()

from fastapi import FastAPI  # noqa: E402

from bench.app import app as celery_app  # noqa: E402

app = FastAPI()


@app.get("/hello")
def hello():
    return {"ok": True}


@app.post("/enqueue")
def enqueue():
    return {"id": celery_app.send_task("bench.incr", queue="bench-web").id}
