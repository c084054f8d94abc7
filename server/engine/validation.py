"""Validation stage P3 of CreateEstimate: rules V1-V27 of docs/pricing-rules.md §3.

``validate_request`` returns **every** violation (an empty tuple means valid):

* each field yields at most one violation, the first failing code of its row;
* violations come in table order (V1 first); rows over array elements in index order; V19 walks
  each branch line completely (kind, poles, trip_at, qty, frame_af, brand, model, remark) before
  the next line; V21 each item (code, then qty);
* the cross-field rows V22-V27 run sub-check by sub-check; a sub-check is skipped when a field it
  reads already has a violation. A violation on an enclosing path counts for the fields under it
  (``main`` absent covers ``main.poles``; ``branches`` over its cap covers ``branches[i].*``;
  ``accessories.items`` in conflict covers the item list V27 reads).

Hard caps for hostile input (service-added, code ``TOO_MANY_ITEMS`` of ``errors.py``):
more than :data:`MAX_BRANCH_LINES` (100) branch lines give one violation at ``branches`` (extra
``max=100``) in V19's place and no per-line checks (V19, V22-V26 on branches); more than
:data:`MAX_ACCESSORY_ITEMS` (20) items give one at ``accessories.items`` (``max=20``) in V21's
place and no per-item checks (V21, V27). The cap is not reported when V20 already put
ACCESSORY_CONFLICT on ``accessories.items`` (one violation per field); items are skipped anyway.
With these caps a request costs O(100 + 20) checks whatever its size; long strings are only
measured (``len``) and echoed truncated (``messages.echo``).

Choices where the rules are silent (docs/pricing-rules.md §20):

* Lengths are counted in Unicode code points of the trimmed string (Python ``len``).
* V2/V17: enumerations are case-sensitive (§2); a line ``brand`` of ``MIXED`` is
  BRAND_NOT_SUPPORTED with §4's fixed text.
* V4: ``mixed_reason`` is length-checked whatever the brand; present under SANGDO/LS is not an
  error (the pipeline adds warning MIXED_REASON_IGNORED). Brand absent or invalid: no
  FIELD_REQUIRED for the reason (the brand already has its violation).
* V20: ``accessories`` absent, or ``enabled`` absent, is GATE_MISSING (gate 3) at
  ``accessories.enabled``; enabled=false with items is ACCESSORY_CONFLICT. V21 still checks the
  items given (so every mistake is reported at once); V27 is skipped, it reads the list.
* V21: ACCESSORY_DUPLICATE compares requestable codes only (an unknown code is
  ACCESSORY_INVALID first). The qty maximum of an invalid code is the general 100.
* V24: sub-checks in the table's order: value not 15/30; present on an MCCB (reads ``kind``); 15
  unless 2P and AT <= 30 (reads ``poles`` and ``trip_at``, not ``kind``).
* V25 (§6.2): identity from :func:`model_identity`; unknown prefix → no check (knowledge gap
  later); a prefix-only model without digits has no poles to compare. BRAND_CONFLICT has two
  sub-checks: estimate brand (SANGDO/LS) vs model brand, then line ``brand`` vs model brand;
  in the second, ``{brand}`` renders as e.g. ``LS (branches[0].brand)``. INVALID_MODEL_COMBO
  reports the first disagreement in the order poles, trip_at, frame_af; ``{what}`` is that
  field name and ``{catalog}`` the catalog value(s) (``4P``, ``125, 150, 175, 200, 225 A``,
  ``200 AF``). trip_at/frame_af pass when any row of the model (either high-sensitivity twin)
  allows them.
* V26: both sub-checks read the estimate brand and are skipped while it has a violation; the
  BRAND_CONFLICT message's ``{v}`` is the line path (``branches[0] is a SANGDO part ...``).
* V27: a magnet is any item whose code is ``magnet_mc22``, whatever its qty; one violation per
  ``timer_24h`` / ``pbl_onoff`` item.
"""

from __future__ import annotations

from kis_estimator.server.engine.catalog import CATALOG_FRAMES, Catalog
from kis_estimator.server.engine.errors import ErrorCode, Violation
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.engine.model import AccessoryLine, BreakerLine, EstimateRequest
from kis_estimator.server.engine.models_prefix import ModelIdentity, model_identity

__all__ = [
    "MAX_ACCESSORY_ITEMS",
    "MAX_BRANCH_LINES",
    "ModelIdentity",
    "model_identity",
    "validate_request",
]

MAX_BRANCH_LINES = 100  # service-added cap (module docstring)
MAX_ACCESSORY_ITEMS = 20  # service-added cap; v1 has 10 requestable codes

BRANDS = frozenset({"SANGDO", "LS", "MIXED"})
LINE_BRANDS = frozenset({"SANGDO", "LS"})
FORMS = frozenset({"ECONOMIC", "STANDARD"})
LOCATIONS = frozenset({"INDOOR", "OUTDOOR"})
MOUNTS = frozenset({"FLUSH", "SURFACE"})
ENCLOSURE_KINDS = frozenset({"STOCK", "CUSTOM"})
MATERIALS = frozenset({"STEEL_1_0", "STEEL_1_6", "SUS201_1_2"})
KINDS = frozenset({"MCCB", "ELB"})
POLES = frozenset({2, 3, 4})
SENSITIVITIES_MA = frozenset({15, 30})
MAX_TRIP_AT = 800
MAX_BRANCH_QTY = 100
MAX_ACCESSORY_QTY = 100
ACCESSORY_QTY_MAX_BY_CODE = {"spd_4p_40ka": 1}
CUSTOM_PRICE_MIN_KRW = 1
CUSTOM_PRICE_MAX_KRW = 100_000_000
MAGNET_CODE = "magnet_mc22"
NEEDS_MAGNET = ("timer_24h", "pbl_onoff")

MAX_ID_CHARS = 128  # request_id, meta.dedup_key
MAX_MIXED_REASON_CHARS = 500
MAX_HEADER_CHARS = 200  # customer.*, project.*
MAX_MODEL_CHARS = 40
MAX_REMARK_CHARS = 200

# V22: poles a branch may have under a main of p poles.
_BRANCH_POLES_ALLOWED = {2: (2,), 3: (2, 3), 4: (2, 3, 4)}

_C = ErrorCode


class _Collector:
    """Violations in emission order plus the set of fields that have one."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._fields: set[str] = set()

    def add(self, code: ErrorCode, field: str, /, **params: object) -> None:
        self.violations.append(violation(code, field, **params))
        self._fields.add(field)

    def bad(self, *fields: str) -> bool:
        """True if any field, or a path enclosing it, already has a violation."""
        return any(self._bad(f) for f in fields)

    def _bad(self, field: str) -> bool:
        if field in self._fields:
            return True
        return any(ch in ".[" and field[:i] in self._fields for i, ch in enumerate(field))


def validate_request(req: EstimateRequest, catalog: Catalog) -> tuple[Violation, ...]:
    """All violations of rules V1-V27 (docs/pricing-rules.md §3) in emission order; empty when valid."""
    c = _Collector()
    _text(c, "request_id", req.request_id, MAX_ID_CHARS)  # V1
    # V2
    if req.brand is None:
        c.add(_C.FIELD_REQUIRED, "brand")
    elif req.brand not in BRANDS:
        c.add(_C.BRAND_NOT_SUPPORTED, "brand", v=req.brand)
    # V3
    if req.form is not None and req.form not in FORMS:
        c.add(_C.FORM_INVALID, "form", v=req.form)
    # V4
    if req.mixed_reason is None:
        if req.brand == "MIXED":
            c.add(_C.FIELD_REQUIRED, "mixed_reason")
    else:
        _text(c, "mixed_reason", req.mixed_reason, MAX_MIXED_REASON_CHARS)
    # V5
    _text(c, "customer.name", req.customer_name, MAX_HEADER_CHARS)
    _text(c, "customer.contact", req.customer_contact, MAX_HEADER_CHARS)
    _text(c, "project.name", req.project_name, MAX_HEADER_CHARS)
    _text(c, "project.location", req.project_location, MAX_HEADER_CHARS)
    # V6, V7
    _enum(c, "installation.location", req.location, LOCATIONS, _C.LOCATION_INVALID, required=True)
    _enum(c, "installation.mount", req.mount, MOUNTS, _C.MOUNT_INVALID, required=True)
    # V8, V9
    _enum(c, "enclosure.kind", req.enclosure_kind, ENCLOSURE_KINDS, _C.ENCLOSURE_KIND_INVALID)
    _enum(c, "enclosure.material", req.material, MATERIALS, _C.MATERIAL_INVALID)
    # V10
    price = req.custom_price_krw
    if price is not None and not CUSTOM_PRICE_MIN_KRW <= price <= CUSTOM_PRICE_MAX_KRW:
        c.add(_C.CUSTOM_PRICE_INVALID, "enclosure.custom_price_krw", v=price)
    _text(c, "meta.dedup_key", req.dedup_key, MAX_ID_CHARS)  # V11
    # V12-V18
    if req.main is None:
        c.add(_C.GATE_MISSING, "main", gate=1)
    else:
        _line(c, "main", req.main, gate=1, branch=False)
    # V19
    branches = _checked_branches(c, req.branches)
    for i, line in enumerate(branches):
        _line(c, f"branches[{i}]", line, gate=2, branch=True)
    _accessories_enabled(c, req)  # V20
    items = _checked_items(c, req.accessory_items, catalog)  # V21
    _v22_pole_topology(c, req.main, branches)
    _v23_branch_at(c, req.main, branches)
    lines = _lines(req.main, branches)
    for path, line in lines:
        _v24_sensitivity(c, path, line)
    for path, line in lines:
        _v25_model(c, path, line, req.brand, catalog)
    for path, line in lines:
        _v26_line_brand(c, path, line, req.brand)
    _v27_dependencies(c, items)
    return tuple(c.violations)


# --------------------------------------------------------------------------- field rows V1-V21


def _text(c: _Collector, field: str, value: str | None, max_chars: int) -> None:
    if value is not None and len(value) > max_chars:
        c.add(_C.TEXT_TOO_LONG, field, max=max_chars)


def _enum(
    c: _Collector,
    field: str,
    value: str | None,
    allowed: frozenset[str],
    code: ErrorCode,
    *,
    required: bool = False,
) -> None:
    if value is None:
        if required:
            c.add(_C.FIELD_REQUIRED, field)
    elif value not in allowed:
        c.add(code, field, v=value)


def _line(c: _Collector, path: str, line: BreakerLine, *, gate: int, branch: bool) -> None:
    """V13-V18 on the main, V19 on a branch line (its walk order: qty after trip_at, remark last)."""
    if line.kind is None:
        c.add(_C.GATE_MISSING, f"{path}.kind", gate=gate)
    elif line.kind not in KINDS:
        c.add(_C.DEVICE_TYPE_INVALID, f"{path}.kind", v=line.kind)
    if line.poles is None:
        c.add(_C.GATE_MISSING, f"{path}.poles", gate=gate)
    elif line.poles not in POLES:
        c.add(_C.POLES_MISMATCH, f"{path}.poles", v=line.poles)
    if line.trip_at is None:
        c.add(_C.GATE_MISSING, f"{path}.trip_at", gate=gate)
    elif line.trip_at <= 0:
        c.add(_C.AT_NOT_POSITIVE, f"{path}.trip_at", v=line.trip_at)
    elif line.trip_at > MAX_TRIP_AT:
        c.add(_C.AT_OUT_OF_RANGE, f"{path}.trip_at", v=line.trip_at)
    if branch:
        if line.qty is None:
            c.add(_C.GATE_MISSING, f"{path}.qty", gate=gate)
        elif line.qty < 1:
            c.add(_C.INVALID_COUNT, f"{path}.qty", v=line.qty)
        elif line.qty > MAX_BRANCH_QTY:
            c.add(_C.BRANCH_QTY_EXCEEDED, f"{path}.qty", v=line.qty)
    if line.frame_af is not None and line.frame_af not in CATALOG_FRAMES:
        c.add(_C.FRAME_INVALID, f"{path}.frame_af", v=line.frame_af)
    if line.brand is not None and line.brand not in LINE_BRANDS:
        c.add(_C.BRAND_NOT_SUPPORTED, f"{path}.brand", v=line.brand)
    _text(c, f"{path}.model", line.model, MAX_MODEL_CHARS)
    if branch:
        _text(c, f"{path}.remark", line.remark, MAX_REMARK_CHARS)


def _checked_branches(c: _Collector, branches: tuple[BreakerLine, ...]) -> tuple[BreakerLine, ...]:
    """V19's list-level checks; returns the lines to check one by one (none when capped)."""
    if not branches:
        c.add(_C.NO_BRANCHES, "branches")
        return ()
    if len(branches) > MAX_BRANCH_LINES:
        c.add(_C.TOO_MANY_ITEMS, "branches", max=MAX_BRANCH_LINES)
        return ()
    return branches


def _accessories_enabled(c: _Collector, req: EstimateRequest) -> None:
    """V20."""
    enabled = req.accessories_enabled
    n = len(req.accessory_items)
    if enabled is None:
        c.add(_C.GATE_MISSING, "accessories.enabled", gate=3)
    elif enabled == (n == 0):  # true with no items, or false with some
        c.add(_C.ACCESSORY_CONFLICT, "accessories.items", enabled=enabled, n=n)


def _checked_items(
    c: _Collector, items: tuple[AccessoryLine, ...], catalog: Catalog
) -> tuple[AccessoryLine, ...]:
    """V21; returns the items V27 may read (none when capped)."""
    if len(items) > MAX_ACCESSORY_ITEMS:
        if not c.bad("accessories.items"):
            c.add(_C.TOO_MANY_ITEMS, "accessories.items", max=MAX_ACCESSORY_ITEMS)
        return ()
    requestable = catalog.requestable_codes
    seen: set[str] = set()
    for j, item in enumerate(items):
        path = f"accessories.items[{j}]"
        code = item.code
        if code is None:
            c.add(_C.FIELD_REQUIRED, f"{path}.code")
        elif code not in requestable:
            c.add(_C.ACCESSORY_INVALID, f"{path}.code", v=code)
        elif code in seen:
            c.add(_C.ACCESSORY_DUPLICATE, f"{path}.code", v=code)
        else:
            seen.add(code)
        max_qty = ACCESSORY_QTY_MAX_BY_CODE.get(code or "", MAX_ACCESSORY_QTY)
        if item.qty is None:
            c.add(_C.FIELD_REQUIRED, f"{path}.qty")
        elif item.qty < 1:
            c.add(_C.INVALID_COUNT, f"{path}.qty", v=item.qty)
        elif item.qty > max_qty:
            c.add(_C.ACCESSORY_QTY_EXCEEDED, f"{path}.qty", v=item.qty, max=max_qty)
    return items


# --------------------------------------------------------------------------- cross-field rows V22-V27


def _lines(main: BreakerLine | None, branches: tuple[BreakerLine, ...]) -> list[tuple[str, BreakerLine]]:
    """(path, line) of the main then the branches in index order (V24-V26 order)."""
    out = [("main", main)] if main is not None else []
    out.extend((f"branches[{i}]", line) for i, line in enumerate(branches))
    return out


def _v22_pole_topology(c: _Collector, main: BreakerLine | None, branches: tuple[BreakerLine, ...]) -> None:
    if main is None or main.poles is None or c.bad("main.poles"):
        return
    allowed = _BRANCH_POLES_ALLOWED[main.poles]
    allowed_text = ", ".join(f"{p}P" for p in allowed)
    for i, line in enumerate(branches):
        field = f"branches[{i}].poles"
        if line.poles is None or c.bad(field):
            continue
        if line.poles not in allowed:
            c.add(_C.POLE_TOPOLOGY_MISMATCH, field, v=line.poles, main=main.poles, allowed=allowed_text)


def _v23_branch_at(c: _Collector, main: BreakerLine | None, branches: tuple[BreakerLine, ...]) -> None:
    if main is None or main.trip_at is None or c.bad("main.trip_at"):
        return
    for i, line in enumerate(branches):
        field = f"branches[{i}].trip_at"
        if line.trip_at is None or c.bad(field):
            continue
        if line.trip_at > main.trip_at:
            c.add(_C.BRANCH_AT_EXCEEDS_MAIN, field, v=line.trip_at, main=main.trip_at)


def _v24_sensitivity(c: _Collector, path: str, line: BreakerLine) -> None:
    field = f"{path}.sensitivity_ma"
    value = line.sensitivity_ma
    if value is None or c.bad(field):
        return
    not_allowed = value not in SENSITIVITIES_MA
    on_mccb = line.kind == "MCCB" and not c.bad(f"{path}.kind")
    high_not_small = (
        value == 15
        and line.poles is not None
        and line.trip_at is not None
        and not c.bad(f"{path}.poles", f"{path}.trip_at")
        and not (line.poles == 2 and line.trip_at <= 30)
    )
    # The three sub-checks share one code, so "first failing wins" is a plain any().
    if not_allowed or on_mccb or high_not_small:
        c.add(_C.SENSITIVITY_INVALID, field, v=value)


def _v25_model(c: _Collector, path: str, line: BreakerLine, brand: str | None, catalog: Catalog) -> None:
    """§6.2 checks in order: DEVICE_TYPE_MISMATCH, BRAND_CONFLICT, INVALID_MODEL_COMBO."""
    field = f"{path}.model"
    model = line.model
    if model is None or c.bad(field):
        return
    ident = model_identity(model, catalog)
    if ident is None:
        return  # unknown prefix: a knowledge gap (§11), not a violation
    if line.kind is not None and not c.bad(f"{path}.kind") and ident.kind != line.kind:
        c.add(_C.DEVICE_TYPE_MISMATCH, field, v=model, model_kind=ident.kind, kind=line.kind)
        return
    conflict = _brand_conflict(c, path, line, brand, ident)
    if conflict is not None:
        c.add(_C.BRAND_CONFLICT, field, v=model, model_brand=ident.brand, brand=conflict)
        return
    combo = _model_combo(c, path, line, ident)
    if combo is not None:
        what, catalog_text = combo
        c.add(_C.INVALID_MODEL_COMBO, field, v=model, what=what, catalog=catalog_text)


def _brand_conflict(
    c: _Collector, path: str, line: BreakerLine, brand: str | None, ident: ModelIdentity
) -> str | None:
    """The brand the model conflicts with (``{brand}`` of the message), or None."""
    if brand in LINE_BRANDS and not c.bad("brand") and ident.brand != brand:
        return brand
    brand_field = f"{path}.brand"
    if line.brand is not None and not c.bad(brand_field) and ident.brand != line.brand:
        return f"{line.brand} ({brand_field})"
    return None


def _model_combo(c: _Collector, path: str, line: BreakerLine, ident: ModelIdentity) -> tuple[str, str] | None:
    """(``what``, ``catalog``) of the first disagreement of model and line, or None."""
    if (
        ident.poles is not None
        and line.poles is not None
        and not c.bad(f"{path}.poles")
        and ident.poles != line.poles
    ):
        return "poles", f"{ident.poles}P"
    if not ident.in_catalog:
        return None
    ratings = ident.trip_ratings
    if line.trip_at is not None and not c.bad(f"{path}.trip_at") and line.trip_at not in ratings:
        return "trip_at", ", ".join(str(a) for a in ratings) + " A"
    frames = ident.frames_af
    if line.frame_af is not None and not c.bad(f"{path}.frame_af") and line.frame_af not in frames:
        return "frame_af", ", ".join(str(f) for f in frames) + " AF"
    return None


def _v26_line_brand(c: _Collector, path: str, line: BreakerLine, brand: str | None) -> None:
    field = f"{path}.brand"
    if brand is None or c.bad("brand", field):
        return
    if brand in LINE_BRANDS:
        if line.brand is not None and line.brand != brand:
            c.add(_C.BRAND_CONFLICT, field, v=path, model_brand=line.brand, brand=brand)
    elif line.model is None and line.brand is None:  # brand == MIXED
        c.add(_C.FIELD_REQUIRED, field)


def _v27_dependencies(c: _Collector, items: tuple[AccessoryLine, ...]) -> None:
    if not items or c.bad("accessories.items"):
        return
    has_magnet = any(item.code == MAGNET_CODE for item in items)
    if has_magnet:
        return
    for j, item in enumerate(items):
        field = f"accessories.items[{j}].code"
        if item.code in NEEDS_MAGNET and not c.bad(field):
            c.add(_C.ACCESSORY_DEPENDENCY, field, v=item.code)
