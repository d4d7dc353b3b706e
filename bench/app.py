"""The benchmark's Celery app: a no-op task that does one Redis INCR.

BENCH_VARIANT=plain sets up plain OpenTelemetry the way ``opentelemetry-instrument`` with
``opentelemetry-distro`` does (SDK defaults, contrib Celery and Redis instrumentors, OTLP/HTTP
exporters); the otel-agensium variants run under ``opentelemetry-instrument`` instead.
"""

import os

import redis
from celery import Celery

BROKER = os.environ["BENCH_BROKER_URL"]

if os.environ.get("BENCH_VARIANT") == "plain":
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
    )
    CeleryInstrumentor().instrument()
    RedisInstrumentor().instrument()

app = Celery("bench", broker=BROKER)
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=16, broker_connection_retry_on_startup=True)
_client = redis.Redis.from_url(BROKER)


@app.task(name="bench.incr", ignore_result=True)
def incr():
    _client.incr("bench:done")
