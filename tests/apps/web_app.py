"""A FastAPI app that enqueues tasks; configured with otel_agensium.configure() (settings from env)."""

import os

import otel_agensium

otel_agensium.configure()

from fastapi import FastAPI  # noqa: E402  (created after configure(), so it is instrumented)

from tests.apps.tasks_app import incr  # noqa: E402

app = FastAPI()
QUEUE = os.environ.get("TEST_QUEUE", "celery")  # a queue of its own per test module


@app.get("/hello")
def hello():
    return {"ok": True}


@app.post("/enqueue")
def enqueue():
    result = incr.apply_async(queue=QUEUE)
    return {"task_id": result.id}


@app.get("/items/{item_id}")
def item(item_id: int):
    return {"item": item_id}


@app.get("/boom")
def boom():
    raise RuntimeError("boom")
