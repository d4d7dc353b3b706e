"""Resources and instrumentation scopes: their encoded fields (cached by identity) and the
grouping of a batch's spans by them, as the official encoder groups them."""

from __future__ import annotations

from typing import Any

from .wire import _RESOURCE_ATTR_HDR, _SCOPE_ATTR_HDR, _attributes_bytes, _cached, _field_bytes, _remember

# id(resource) -> (resource, (ResourceSpans.resource field, ResourceSpans.schema_url field))
_resources: dict[int, tuple[Any, tuple[bytes, bytes]]] = {}
# id(scope) -> (scope, (ScopeSpans.scope field, ScopeSpans.schema_url field))
_scopes: dict[int, tuple[Any, tuple[bytes, bytes]]] = {}

# -- resource and scope ---------------------------------------------------------------------


def _resource_fields(resource: Any) -> tuple[bytes, bytes]:
    """``ResourceSpans.resource`` (field 1) and ``ResourceSpans.schema_url`` (field 3)."""
    fields = _cached(_resources, resource)
    if fields is not None:
        return fields
    head = _field_bytes(b"\x0a", _attributes_bytes(resource.attributes, _RESOURCE_ATTR_HDR))
    schema_url = resource.schema_url
    tail = _field_bytes(b"\x1a", schema_url.encode()) if schema_url else b""
    return _remember(_resources, resource, (head, tail))


def _scope_fields(scope: Any) -> tuple[bytes, bytes]:
    """``ScopeSpans.scope`` (field 1) and ``ScopeSpans.schema_url`` (field 3)."""
    fields = _cached(_scopes, scope)
    if fields is not None:
        return fields
    if scope is None:
        head, tail = b"\x0a\x00", b""
    else:
        parts = []
        name = scope.name
        if name:
            parts.append(_field_bytes(b"\x0a", name.encode()))
        version = scope.version
        if version:
            parts.append(_field_bytes(b"\x12", version.encode()))
        parts.append(_attributes_bytes(scope.attributes, _SCOPE_ATTR_HDR))
        head = _field_bytes(b"\x0a", b"".join(parts))
        schema_url = scope.schema_url
        tail = _field_bytes(b"\x1a", schema_url.encode()) if schema_url else b""
    return _remember(_scopes, scope, (head, tail))


class _ScopeGroup:
    __slots__ = ("head", "tail", "parts")

    def __init__(self, scope: Any) -> None:
        self.head, self.tail = _scope_fields(scope)
        self.parts: list[bytes] = []  # (header, span) pairs


class _ResourceGroup:
    __slots__ = ("resource", "head", "tail", "parts_by_id", "by_value", "groups")

    def __init__(self, resource: Any) -> None:
        self.resource = resource
        self.head, self.tail = _resource_fields(resource)
        self.parts_by_id: dict[int, list[bytes]] = {}  # id(scope) -> its group's parts, every scope object seen
        self.by_value: dict[Any, _ScopeGroup] = {}  # first scope of each equal class -> group
        self.groups: list[_ScopeGroup] = []

    def scope_parts(self, scope: Any) -> list[bytes]:
        group = self.by_value.get(scope)  # equal scopes share a group (hash and ==, as official)
        if group is None:
            group = self.by_value[scope] = _ScopeGroup(scope)
            self.groups.append(group)
        self.parts_by_id[id(scope)] = group.parts
        return group.parts


class _ResourceGroups:
    """The batch's resource groups, in order of first appearance."""

    __slots__ = ("groups", "by_id", "by_value")

    def __init__(self) -> None:
        self.groups: list[_ResourceGroup] = []
        self.by_id: dict[int, _ResourceGroup] = {}  # id(resource) -> group, every resource object seen
        self.by_value: dict[Any, _ResourceGroup] | None = None  # built when a second resource object shows up

    def group(self, resource: Any) -> _ResourceGroup:
        group: _ResourceGroup | None
        if not self.groups:
            group = _ResourceGroup(resource)
            self.groups.append(group)
        else:
            if self.by_value is None:  # Resource.__hash__ serializes its attributes: only now
                first = self.groups[0]
                self.by_value = {first.resource: first}
            group = self.by_value.get(resource)  # equal resources share a group, as official
            if group is None:
                group = self.by_value[resource] = _ResourceGroup(resource)
                self.groups.append(group)
        self.by_id[id(resource)] = group
        return group
