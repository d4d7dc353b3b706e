"""The FastAPI app of the secrets drill: enqueue over HTTP, health routers, a failing route.

Broker from TEST_BROKER_URL (with a password); SECRETS_QUEUE is where tasks go;
DEAD_REDIS_URL (with the same password, nothing listening) feeds a second health router
under /dead, so the error path of the health checks runs too.
"""

import os
from contextlib import asynccontextmanager

import otel_agensium

telemetry = otel_agensium.configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "web-secrets"))

from fastapi import FastAPI  # noqa: E402 - created after configure(), so it is instrumented

from otel_agensium.health import health_router  # noqa: E402
from tests.apps.input_app import app as celery_app  # noqa: E402

QUEUE = os.environ.get("SECRETS_QUEUE", "celery")


@asynccontextmanager
async def lifespan(_: FastAPI):
    yield
    telemetry.shutdown()


api = FastAPI(lifespan=lifespan)
api.include_router(health_router(app=celery_app, queues=[QUEUE]))
api.include_router(
    health_router(app=celery_app, redis_url=os.environ["DEAD_REDIS_URL"], queues=[QUEUE], prefix="/dead", timeout=1.0)
)


@api.post("/enqueue")
def enqueue(value: str = "abc"):
    first = celery_app.send_task("i.take", (value,), queue=QUEUE)
    second = celery_app.send_task("t.incr", ("drill:secrets",), queue=QUEUE)
    return {"task_ids": [first.id, second.id]}


@api.get("/fail")
def fail():
    raise RuntimeError("this route fails on purpose")
