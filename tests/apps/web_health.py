"""The FastAPI app the health tests serve with uvicorn.

Broker from TEST_BROKER_URL (through tests.apps.tasks_app); HEALTH_REDIS_URL, when set, is
the Redis the router checks; HEALTH_QUEUES the queues it measures.
"""

import os
from contextlib import asynccontextmanager

import otel_agensium

telemetry = otel_agensium.configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "web-health"))

from fastapi import FastAPI  # noqa: E402 - created after configure(), so it is instrumented

from otel_agensium.health import health_router  # noqa: E402
from tests.apps.tasks_app import app as celery_app  # noqa: E402


@asynccontextmanager
async def lifespan(_: FastAPI):
    yield
    telemetry.shutdown()


queues = os.environ.get("HEALTH_QUEUES")
api = FastAPI(lifespan=lifespan)
api.include_router(
    health_router(
        app=celery_app,
        redis_url=os.environ.get("HEALTH_REDIS_URL") or None,
        queues=queues.split(",") if queues else None,
    )
)
