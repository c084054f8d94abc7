"""The catalog: breakers, stock enclosures and accessories (docs/pricing-rules.md §5).

Parsed from the three CSV files' bytes; ``catalog_version`` as docs/pricing-rules.md §5.4 defines it.
Rows keep their 1-based line number (header = line 1) and raw cells for ``tables/pricing.json`` (§15).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ACCESSORIES_FILE = "accessories.csv"
BREAKERS_FILE = "breakers.csv"
ENCLOSURES_FILE = "enclosures.csv"
CATALOG_FILES = (ACCESSORIES_FILE, BREAKERS_FILE, ENCLOSURES_FILE)

CATALOG_FRAMES = frozenset({30, 50, 60, 100, 125, 200, 250, 400, 600, 800})
SMALL_2P_MODELS = frozenset({"SIE32", "SIB32", "32GRHS", "BS32"})  # normalised (docs/pricing-rules.md §1)


class CatalogError(ValueError):
    """The catalog files are malformed (a start-up failure, never a request error)."""


def normalise_model(model: str) -> str:
    """Lookup key of a model: upper-case, spaces and hyphens removed (docs/pricing-rules.md §5.1)."""
    return model.upper().replace(" ", "").replace("-", "")


@dataclass(frozen=True, slots=True)
class BreakerRow:
    line: int
    raw: Mapping[str, str]
    brand: str
    model: str
    kind: str
    series: str
    grade: str
    poles: int
    frame_af: int
    trip_ratings: tuple[int, ...]
    compact: bool
    high_sensitivity: bool
    price_krw: int | None
    price_high_krw: int | None

    @property
    def key(self) -> str:
        return normalise_model(self.model)

    def price_at(self, trip_at: int) -> int | None:
        """Applicable price at ``trip_at`` by the two-price rule [SEL-5]."""
        top = max(self.trip_ratings)
        if self.price_high_krw is not None and trip_at == top and top > 100:
            return self.price_high_krw
        return self.price_krw


@dataclass(frozen=True, slots=True)
class EnclosureRow:
    line: int
    raw: Mapping[str, str]
    series: str
    model: str
    material: str
    thickness_mm: str
    location: str
    width_mm: int
    height_mm: int
    depth_mm: int
    price_krw: int


@dataclass(frozen=True, slots=True)
class AccessoryRow:
    line: int
    raw: Mapping[str, str]
    code: str
    name: str
    unit: str
    price_krw: int | None
    requestable: bool


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    breakers: tuple[BreakerRow, ...]
    enclosures: tuple[EnclosureRow, ...]
    accessories: Mapping[str, AccessoryRow]
    _by_model: Mapping[tuple[str, bool], BreakerRow] = field(repr=False, default_factory=dict)
    _models: frozenset[str] = field(repr=False, default=frozenset())
    # Indexes built once at parse time, each list in catalog order: every estimate looks rows up.
    # file name -> line -> raw cells (evidence)
    _raw_by_line: Mapping[str, Mapping[int, Mapping[str, str]]] = field(repr=False, default_factory=dict)
    # (brand, kind, poles, high_sensitivity) -> breaker rows (§6.1 auto-selection)
    _breakers_by_key: Mapping[tuple[str, str, int, bool], tuple[BreakerRow, ...]] = field(
        repr=False, default_factory=dict
    )
    # series -> enclosure rows (§8 stock search)
    _enclosures_by_series: Mapping[str, tuple[EnclosureRow, ...]] = field(repr=False, default_factory=dict)

    @property
    def requestable_codes(self) -> frozenset[str]:
        return frozenset(code for code, row in self.accessories.items() if row.requestable)

    def breaker(self, model: str, high_sensitivity: bool) -> BreakerRow | None:
        """The row of (normalised model, hs), or None."""
        return self._by_model.get((normalise_model(model), high_sensitivity))

    def has_model(self, model: str) -> bool:
        """True if any row (either hs) has this normalised model."""
        return normalise_model(model) in self._models

    def accessory(self, code: str) -> AccessoryRow:
        return self.accessories[code]

    def breakers_for(
        self, brand: str, kind: str, poles: int, high_sensitivity: bool
    ) -> tuple[BreakerRow, ...]:
        """Breaker rows of exactly this brand, kind, poles and hs variant, in catalog order."""
        return self._breakers_by_key.get((brand, kind, poles, high_sensitivity), ())

    def enclosures_of(self, series: str) -> tuple[EnclosureRow, ...]:
        """Stock enclosure rows of one series, in catalog order."""
        return self._enclosures_by_series.get(series, ())

    def raw_row(self, file: str, line: int) -> Mapping[str, str] | None:
        """The raw cells of ``file``'s row at 1-based ``line`` (header = 1), or None."""
        return self._raw_by_line.get(file, {}).get(line)


def _int_cell(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CatalogError(f"{where}: not an integer: {value!r}") from None


def _opt_int(value: str, where: str) -> int | None:
    return None if value == "" else _int_cell(value, where)


def _rows(name: str, data: bytes) -> list[tuple[int, dict[str, str]]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{name}: not UTF-8: {exc}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise CatalogError(f"{name}:{reader.line_num}: wrong number of cells")
        out.append((reader.line_num, dict(row)))
    return out


def catalog_version(files: Mapping[str, bytes]) -> str:
    """SHA-256 of ``<name>:<sha256 of bytes>\\n`` over the files in order (docs/pricing-rules.md §5.4)."""
    text = "".join(f"{name}:{hashlib.sha256(files[name]).hexdigest()}\n" for name in CATALOG_FILES)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def parse_catalog(files: Mapping[str, bytes]) -> Catalog:
    """Parse the three catalog files (name -> bytes)."""
    missing = [n for n in CATALOG_FILES if n not in files]
    if missing:
        raise CatalogError(f"missing catalog files: {', '.join(missing)}")
    breakers = []
    for line, r in _rows(BREAKERS_FILE, files[BREAKERS_FILE]):
        where = f"{BREAKERS_FILE}:{line}"
        breakers.append(
            BreakerRow(
                line=line,
                raw=r,
                brand=r["brand"],
                model=r["model"],
                kind=r["kind"],
                series=r["series"],
                grade=r["grade"],
                poles=_int_cell(r["poles"], where),
                frame_af=_int_cell(r["frame_af"], where),
                trip_ratings=tuple(_int_cell(v, where) for v in r["trip_ratings"].split(";")),
                compact=r["compact"] == "1",
                high_sensitivity=r["high_sensitivity"] == "1",
                price_krw=_opt_int(r["price_krw"], where),
                price_high_krw=_opt_int(r["price_high_krw"], where),
            )
        )
    enclosures = []
    for line, r in _rows(ENCLOSURES_FILE, files[ENCLOSURES_FILE]):
        where = f"{ENCLOSURES_FILE}:{line}"
        enclosures.append(
            EnclosureRow(
                line=line,
                raw=r,
                series=r["series"],
                model=r["model"],
                material=r["material"],
                thickness_mm=r["thickness_mm"],
                location=r["location"],
                width_mm=_int_cell(r["width_mm"], where),
                height_mm=_int_cell(r["height_mm"], where),
                depth_mm=_int_cell(r["depth_mm"], where),
                price_krw=_int_cell(r["price_krw"], where),
            )
        )
    accessories = {}
    for line, r in _rows(ACCESSORIES_FILE, files[ACCESSORIES_FILE]):
        where = f"{ACCESSORIES_FILE}:{line}"
        accessories[r["code"]] = AccessoryRow(
            line=line,
            raw=r,
            code=r["code"],
            name=r["name"],
            unit=r["unit"],
            price_krw=_opt_int(r["price_krw"], where),
            requestable=r["requestable"] == "1",
        )
    by_model: dict[tuple[str, bool], BreakerRow] = {}
    for row in breakers:
        key = (row.key, row.high_sensitivity)
        if key in by_model:
            raise CatalogError(f"{BREAKERS_FILE}:{row.line}: duplicate (model, high_sensitivity) {key}")
        by_model[key] = row
    breakers_by_key: dict[tuple[str, str, int, bool], list[BreakerRow]] = {}
    for row in breakers:
        breakers_by_key.setdefault((row.brand, row.kind, row.poles, row.high_sensitivity), []).append(row)
    enclosures_by_series: dict[str, list[EnclosureRow]] = {}
    for enclosure in enclosures:
        enclosures_by_series.setdefault(enclosure.series, []).append(enclosure)
    return Catalog(
        version=catalog_version(files),
        breakers=tuple(breakers),
        enclosures=tuple(enclosures),
        accessories=accessories,
        _by_model=by_model,
        _models=frozenset(k for k, _ in by_model),
        _raw_by_line={
            BREAKERS_FILE: {row.line: row.raw for row in breakers},
            ENCLOSURES_FILE: {row.line: row.raw for row in enclosures},
            ACCESSORIES_FILE: {row.line: row.raw for row in accessories.values()},
        },
        _breakers_by_key={key: tuple(rows) for key, rows in breakers_by_key.items()},
        _enclosures_by_series={key: tuple(rows) for key, rows in enclosures_by_series.items()},
    )


DEFAULT_CATALOG_DIR = Path(__file__).resolve().parent.parent / "data" / "catalog"


def load_catalog(directory: Path = DEFAULT_CATALOG_DIR) -> Catalog:
    """Read and parse the catalog files of ``directory``."""
    try:
        files = {name: (directory / name).read_bytes() for name in CATALOG_FILES}
    except OSError as exc:
        raise CatalogError(f"cannot read catalog in {directory}: {exc}") from None
    return parse_catalog(files)
