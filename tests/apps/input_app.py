"""drill_app plus tasks that take an argument and never echo it back (drills 5 and 6).

The return value and the exception text carry no argument, so an argument found in the
telemetry can only have come from recording the arguments themselves.
"""

import logging

from tests.apps.drill_app import app

__all__ = ["app"]
log = logging.getLogger("tests.input_app")


@app.task(name="i.take")
def take(value, extra=None):
    log.info("i.take working on a value of %d characters", len(value))
    return len(value)


@app.task(name="i.take_fail")
def take_fail(value, extra=None):
    log.info("i.take_fail about to raise")
    raise ValueError("i.take_fail failed on purpose")
