"""Brand, kind and poles of an explicit model string (docs/pricing-rules.md §6.2 `[SEL-4]`).

A model found in the catalog (by normalised model, either high-sensitivity twin) takes brand,
kind and poles from its row. Otherwise they come from the prefix of the normalised model:

* ``SBE`` ``SBS`` ``SBC`` ``SIB`` → SANGDO MCCB; ``SEE`` ``SES`` ``SEC`` ``SIE`` → SANGDO ELB;
* ``ABN`` ``ABS``, ``BS`` followed by a digit → LS MCCB; ``EBN`` ``EBS``, ``32GR`` → LS ELB;
* poles = last digit of the first (ASCII) digit group (``SBS-254`` → 4); ``None`` without digits.
  Digit groups are read from the model as written, before spaces and hyphens are removed, so
  ``EBN-103 30mA`` has poles 3 (its normalised form ``EBN10330MA`` would give 0).

An unknown prefix gives ``None``: not a validation error but a knowledge gap (§11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kis_estimator.server.engine.catalog import BreakerRow, Catalog, normalise_model

__all__ = ["ModelIdentity", "model_identity", "prefix_identity"]

# Longest prefixes first is not needed: no prefix of this table is a prefix of another.
_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("SBE", "SANGDO", "MCCB"),
    ("SBS", "SANGDO", "MCCB"),
    ("SBC", "SANGDO", "MCCB"),
    ("SIB", "SANGDO", "MCCB"),
    ("SEE", "SANGDO", "ELB"),
    ("SES", "SANGDO", "ELB"),
    ("SEC", "SANGDO", "ELB"),
    ("SIE", "SANGDO", "ELB"),
    ("ABN", "LS", "MCCB"),
    ("ABS", "LS", "MCCB"),
    ("EBN", "LS", "ELB"),
    ("EBS", "LS", "ELB"),
    ("32GR", "LS", "ELB"),
)
_BS = re.compile(r"BS[0-9]")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a model string says about itself.

    ``rows`` are its catalog rows (one, or two high-sensitivity twins); empty when the model
    is known only by its prefix. ``poles`` is ``None`` for a prefix-only model without digits.
    """

    model: str  # normalised
    brand: str
    kind: str
    poles: int | None
    rows: tuple[BreakerRow, ...] = ()

    @property
    def in_catalog(self) -> bool:
        return bool(self.rows)

    @property
    def trip_ratings(self) -> tuple[int, ...]:
        """Selectable AT values over all rows of the model, ascending (empty if not in catalog)."""
        return tuple(sorted({a for row in self.rows for a in row.trip_ratings}))

    @property
    def frames_af(self) -> tuple[int, ...]:
        """Frame(s) of the model's rows, ascending (empty if not in catalog)."""
        return tuple(sorted({row.frame_af for row in self.rows}))


def prefix_identity(model: str) -> ModelIdentity | None:
    """Identity from the prefix alone (ignores the catalog); ``None`` for an unknown prefix."""
    key = normalise_model(model)
    brand_kind: tuple[str, str] | None = None
    for prefix, brand, kind in _PREFIXES:
        if key.startswith(prefix):
            brand_kind = (brand, kind)
            break
    if brand_kind is None and _BS.match(key):
        brand_kind = ("LS", "MCCB")
    if brand_kind is None:
        return None
    digits = _DIGITS.search(model)
    poles = int(digits.group()[-1]) if digits else None
    return ModelIdentity(model=key, brand=brand_kind[0], kind=brand_kind[1], poles=poles)


def model_identity(model: str, catalog: Catalog) -> ModelIdentity | None:
    """Identity of an explicit model: from its catalog rows, else from its prefix (§6.2)."""
    rows = tuple(row for hs in (False, True) if (row := catalog.breaker(model, hs)) is not None)
    if rows:
        first = rows[0]
        return ModelIdentity(
            model=first.key, brand=first.brand, kind=first.kind, poles=first.poles, rows=rows
        )
    return prefix_identity(model)
