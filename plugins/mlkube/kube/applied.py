"""What a field manager applied to a live object, read back from its ``managedFields``.

A roll-back re-applies it: only the fields that manager's apply owns, so nothing the API
server (defaults, a Service's cluster IP) or a controller owns is claimed. An object mlkube
never applied is put back from its labels, annotations and spec instead (:func:`restorable`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from mlkube.kube.api import FIELD_MANAGER, meta_of

# Fields the API server allocates: never re-applied from a live object.
_ALLOCATED = {"Service": ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy",
                          "healthCheckNodePort")}


def applied_config(live: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any] | None:
    """What ``manager`` last applied to ``live``, read back from its ``managedFields``.

    Like client-go's ``Extract*`` functions: only the fields the manager's apply owns, so
    re-applying it restores them and claims nothing that the API server (defaults, a Service's
    cluster IP) or a controller owns. ``None`` when ``manager`` never applied to it.
    """
    entries = [m for m in meta_of(live).get("managedFields") or []
               if m.get("manager") == manager and m.get("operation") == "Apply"
               and not m.get("subresource") and m.get("fieldsV1")]
    if not entries:
        return None
    entry = next((m for m in entries if m.get("apiVersion") == live.get("apiVersion")), entries[0])
    config: dict[str, Any] = _extract(live, entry["fieldsV1"])
    return identified(config, live)


def identified(config: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the apiVersion, kind, name and namespace of ``live``."""
    config["apiVersion"] = live["apiVersion"]
    config["kind"] = live["kind"]
    metadata = config.setdefault("metadata", {})
    metadata["name"] = meta_of(live)["name"]
    if meta_of(live).get("namespace"):
        metadata["namespace"] = meta_of(live)["namespace"]
    return config


def _extract(value: Any, fields: dict[str, Any]) -> Any:
    """The part of ``value`` a ``fieldsV1`` set names (``f:``, ``k:``, ``v:`` keys)."""
    children = {k: v for k, v in fields.items() if k != "."}
    if not children:  # a leaf, or an atomic list/map: owned whole
        if "." in fields and isinstance(value, (dict, list)):
            return type(value)()
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return {key[2:]: _extract(value[key[2:]], sub) for key, sub in children.items()
                if key.startswith("f:") and key[2:] in value}
    if isinstance(value, list):
        kept = []
        for item in value:
            for key, sub in children.items():
                if key.startswith("k:"):
                    ident = json.loads(key[2:])
                    if isinstance(item, dict) and all(item.get(k) == v for k, v in ident.items()):
                        kept.append({**ident, **_extract(item, sub)})
                        break
                elif key.startswith("v:") and item == json.loads(key[2:]):
                    kept.append(copy.deepcopy(item))
                    break
        return kept
    return copy.deepcopy(value)


def owns(live: dict[str, Any], manager: str, *path: str) -> bool:
    """Whether ``manager``'s apply owns the field at ``path`` of ``live``."""
    for entry in meta_of(live).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply" \
                or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        for part in path:
            fields = fields.get(f"f:{part}") if isinstance(fields, dict) else None
        if fields is not None:
            return True
    return False


def _fallback_config(live: dict[str, Any]) -> dict[str, Any]:
    """An object mlkube never applied: its labels, annotations and spec, minus what the API
    server allocated or controllers own."""
    meta = meta_of(live)
    own = {k: v for k, v in (meta.get("annotations") or {}).items()
           if not k.startswith(("kubectl.kubernetes.io/", "deployment.kubernetes.io/"))}
    spec = copy.deepcopy(live.get("spec") or {})
    for field in _ALLOCATED.get(live["kind"], ()):
        spec.pop(field, None)
    config = {"metadata": {"labels": dict(meta.get("labels") or {}), "annotations": own},
              "spec": spec}
    return identified(config, live)


def restorable(live: dict[str, Any]) -> dict[str, Any]:
    """What to apply to put ``live`` back as it is (see :func:`applied_config`)."""
    return applied_config(live) or _fallback_config(live)
