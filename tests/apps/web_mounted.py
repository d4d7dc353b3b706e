"""FastAPI apps mounted in a FastAPI app, one level and two (tests/test_web_mounted.py)."""

from fastapi import FastAPI

import otel_agensium

otel_agensium.configure(metric_export_interval=500, bsp_schedule_delay=100)

items = FastAPI()


@items.get("/items/{item_id}")
def item(item_id: int) -> dict:
    return {"item_id": item_id}


tenant = FastAPI()
tenant.mount("/shop", items)

app = FastAPI()
app.mount("/v1", items)
app.mount("/tenants/{tenant_id}", tenant)


@app.get("/top")
def top() -> dict:
    return {}
