"""Requests from JSON-shaped data, the canonical request and its hash (docs/pricing-rules.md §2, §13)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kis_estimator.server.engine.model import AccessoryLine, BreakerLine, EstimateRequest

DEFAULT_FORM = "ECONOMIC"
DEFAULT_ENCLOSURE_KIND = "STOCK"
DEFAULT_MATERIAL = "STEEL_1_6"
DEFAULT_SENSITIVITY_MA = 30


def clean_text(value: str | None) -> str | None:
    """Trim a string; an empty string counts as absent (docs/pricing-rules.md §2)."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def _str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{path}{key} must be a string")
    return clean_text(value)


def _int(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{path}{key} must be an integer")
    if isinstance(value, str):  # proto3 JSON writes int64 as a string
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{path}{key} must be an integer") from None
    if not isinstance(value, int):
        raise ValueError(f"{path}{key} must be an integer")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"{path}{key} must be a boolean")
    return value


def _obj(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}{key} must be an object")
    return value


def _breaker(obj: Mapping[str, Any], path: str) -> BreakerLine:
    return BreakerLine(
        kind=_str(obj, "kind", path),
        poles=_int(obj, "poles", path),
        trip_at=_int(obj, "trip_at", path),
        frame_af=_int(obj, "frame_af", path),
        model=_str(obj, "model", path),
        brand=_str(obj, "brand", path),
        sensitivity_ma=_int(obj, "sensitivity_ma", path),
        qty=_int(obj, "qty", path),
        remark=_str(obj, "remark", path),
    )


def request_from_dict(data: Mapping[str, Any]) -> EstimateRequest:
    """Build a request from the JSON shape of docs/pricing-rules.md §2 (snake_case names, as in proto JSON).

    Raises ``ValueError`` naming the path when a value has the wrong JSON type.
    """
    customer = _obj(data, "customer", "") or {}
    project = _obj(data, "project", "") or {}
    installation = _obj(data, "installation", "") or {}
    enclosure = _obj(data, "enclosure", "") or {}
    meta = _obj(data, "meta", "") or {}
    main = _obj(data, "main", "")
    accessories = _obj(data, "accessories", "")
    raw_branches = data.get("branches") or []
    if not isinstance(raw_branches, list):
        raise ValueError("branches must be a list")
    branches = []
    for i, raw in enumerate(raw_branches):
        if not isinstance(raw, Mapping):
            raise ValueError(f"branches[{i}] must be an object")
        branches.append(_breaker(raw, f"branches[{i}]."))
    items: list[AccessoryLine] = []
    enabled: bool | None = None
    if accessories is not None:
        enabled = _bool(accessories, "enabled", "accessories.")
        raw_items = accessories.get("items") or []
        if not isinstance(raw_items, list):
            raise ValueError("accessories.items must be a list")
        for j, raw in enumerate(raw_items):
            if not isinstance(raw, Mapping):
                raise ValueError(f"accessories.items[{j}] must be an object")
            p = f"accessories.items[{j}]."
            items.append(AccessoryLine(code=_str(raw, "code", p), qty=_int(raw, "qty", p)))
    return EstimateRequest(
        brand=_str(data, "brand", ""),
        request_id=_str(data, "request_id", ""),
        customer_name=_str(customer, "name", "customer."),
        customer_contact=_str(customer, "contact", "customer."),
        project_name=_str(project, "name", "project."),
        project_location=_str(project, "location", "project."),
        mixed_reason=_str(data, "mixed_reason", ""),
        form=_str(data, "form", ""),
        location=_str(installation, "location", "installation."),
        mount=_str(installation, "mount", "installation."),
        floor_standing=bool(_bool(installation, "floor_standing", "installation.")),
        enclosure_kind=_str(enclosure, "kind", "enclosure."),
        material=_str(enclosure, "material", "enclosure."),
        custom_price_krw=_int(enclosure, "custom_price_krw", "enclosure."),
        steel_p_cover=bool(_bool(enclosure, "steel_p_cover", "enclosure.")),
        main=_breaker(main, "main.") if main is not None else None,
        branches=tuple(branches),
        accessories_enabled=enabled,
        accessory_items=tuple(items),
        dedup_key=_str(meta, "dedup_key", "meta."),
    )


def _compact(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}


def _canonical_breaker(line: BreakerLine, *, branch: bool) -> dict[str, Any]:
    sensitivity = line.sensitivity_ma
    if sensitivity is None and line.kind == "ELB":
        sensitivity = DEFAULT_SENSITIVITY_MA
    out = {
        "kind": line.kind,
        "poles": line.poles,
        "trip_at": line.trip_at,
        "frame_af": line.frame_af,
        "model": line.model,
        "brand": line.brand,
        "sensitivity_ma": sensitivity,
    }
    if branch:
        out["qty"] = line.qty
        out["remark"] = line.remark
    return _compact(out)


def canonical_request(req: EstimateRequest) -> dict[str, Any]:
    """Canonical request (docs/pricing-rules.md §13.3): defaults in, absent fields and request_id out."""
    accessories: dict[str, Any] = _compact({"enabled": req.accessories_enabled})
    if req.accessory_items:
        accessories["items"] = [_compact({"code": it.code, "qty": it.qty}) for it in req.accessory_items]
    out: dict[str, Any] = {
        "brand": req.brand,
        "customer": _compact({"name": req.customer_name, "contact": req.customer_contact}) or None,
        "project": _compact({"name": req.project_name, "location": req.project_location}) or None,
        "mixed_reason": req.mixed_reason,
        "form": req.form or DEFAULT_FORM,
        "installation": _compact(
            {"location": req.location, "mount": req.mount, "floor_standing": req.floor_standing}
        ),
        "enclosure": _compact(
            {
                "kind": req.enclosure_kind or DEFAULT_ENCLOSURE_KIND,
                "material": req.material or DEFAULT_MATERIAL,
                "custom_price_krw": req.custom_price_krw,
                "steel_p_cover": req.steel_p_cover,
            }
        ),
        "main": _canonical_breaker(req.main, branch=False) if req.main is not None else None,
        "branches": [_canonical_breaker(b, branch=True) for b in req.branches] or None,
        "accessories": accessories if (accessories or req.accessories_enabled is not None) else None,
        "meta": _compact({"dedup_key": req.dedup_key}) or None,
    }
    return _compact(out)


def canonical_json(req: EstimateRequest) -> bytes:
    """Canonical request serialised exactly as docs/pricing-rules.md §13 prescribes, UTF-8 encoded."""
    text = json.dumps(canonical_request(req), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def request_hash(req: EstimateRequest) -> str:
    """Lowercase hex SHA-256 of the canonical request."""
    return hashlib.sha256(canonical_json(req)).hexdigest()
