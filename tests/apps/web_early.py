"""A FastAPI app created before ``configure()``, without ``instrument_app``: FastAPI's native
telemetry was set up unwrapped (tests/test_web_early_app.py). Run with plain uvicorn."""

from fastapi import FastAPI

import otel_agensium

app = FastAPI()


@app.get("/items/{item_id}")
def item(item_id: int) -> dict:
    return {"item_id": item_id}


otel_agensium.configure(metric_export_interval=500, bsp_schedule_delay=100)
