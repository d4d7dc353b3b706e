"""Module attributes imported on first use: the work behind a module's ``__getattr__`` and its name table."""

from __future__ import annotations

import importlib
import sys
from typing import Any


def load(module_name: str, table: dict[str, str], name: str) -> Any:
    """``name`` from the module ``table[name]`` (relative to ``module_name``'s package).

    The value is kept in ``module_name``'s namespace, so the next access does not come here.
    A name not in ``table`` raises the ``AttributeError`` Python raises for a missing attribute.
    """
    target = table.get(name)
    if target is None:
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    module = sys.modules[module_name]
    value = getattr(importlib.import_module(target, module.__package__), name)
    setattr(module, name, value)
    return value
