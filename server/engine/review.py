"""Review reasons for knowledge gaps and their question templates (docs/pricing-rules.md §11, ``[REV-*]``).

A knowledge gap never fails a request: the estimate is stored NEEDS_REVIEW / ABSTAIN with one
reason per gap. Reasons get ids R1, R2, … in the order they are raised; the pipeline raises them in
the order §11 prescribes (main, spd_mccb, branches by index, enclosure, accessory items).

Rule ids recorded: ``REV-1`` a reason raised (applied to its path), ``REV-R`` a reviewer's
resolution applied (§11.2: the evidence records the reviewer's answers as ``[REV-R]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from kis_estimator.server.engine.messages import echo
from kis_estimator.server.engine.model import Resolution, ReviewReason, RuleApplication

__all__ = [
    "CUSTOM_ENCLOSURE_PRICE",
    "NEED_KNOWLEDGE_UPDATE",
    "ReviewBook",
    "question_custom_enclosure",
    "question_no_model",
    "question_no_price",
    "question_unknown_model",
    "ver8",
]

NEED_KNOWLEDGE_UPDATE = "NEED_KNOWLEDGE_UPDATE"
CUSTOM_ENCLOSURE_PRICE = "CUSTOM_ENCLOSURE_PRICE"

_LOCATION_KO = {"INDOOR": "옥내", "OUTDOOR": "옥외"}
_MATERIAL_KO = {"STEEL_1_0": "STEEL 1.0T", "STEEL_1_6": "STEEL 1.6T", "SUS201_1_2": "SUS201 1.2T"}


def ver8(catalog_version: str) -> str:
    """First 8 hex characters of the catalog version (§11 ``{ver8}``)."""
    return catalog_version[:8]


def question_no_model(
    *,
    catalog_version: str,
    brand: str | None,
    kind: str,
    poles: int,
    trip_at: int,
    frame_af: int | None,
    high_sensitivity: bool,
    form: str,
) -> tuple[str, str]:
    """§11 question when auto-selection finds no row; an unknown brand (MIXED, §6.3) reads "unknown"."""
    v = ver8(catalog_version)
    brand_en = brand or "unknown brand"
    brand_ko = brand or "브랜드 미상"
    frame_en = "" if frame_af is None else f", frame {frame_af} AF"
    frame_ko = "" if frame_af is None else f", 프레임 {frame_af} AF"
    hs_en = ", 15 mA" if high_sensitivity else ""
    hs_ko = ", 고감도 15mA" if high_sensitivity else ""
    en = (
        f"No catalog model (catalog {v}) for {brand_en} {kind} {poles}P {trip_at} A{frame_en}{hs_en}, "
        f"form {form}. Which model should be used and what is its quote price in KRW?"
    )
    ko = (
        f"카탈로그({v})에 {brand_ko} {kind} {poles}P {trip_at}A{frame_ko}{hs_ko} {form} 모델이 없습니다. "
        "사용할 모델명과 견적 단가(원)를 알려 주세요."
    )
    return en, ko


def question_unknown_model(*, catalog_version: str, model: str) -> tuple[str, str]:
    """§11 question for an explicit model not in the catalog (or without the 15 mA twin)."""
    v, m = ver8(catalog_version), echo(model)
    en = (
        f"Model {m} is not in catalog {v}. "
        "Please give its brand, kind, poles, frame, trip ratings and quote price."
    )
    ko = (
        f"모델 {m}이(가) 카탈로그({v})에 없습니다. "
        "브랜드, 종류, 극수, 프레임, 정격전류 목록과 견적 단가를 알려 주세요."
    )
    return en, ko


def question_no_price(*, catalog_version: str, item: str) -> tuple[str, str]:
    """§11 question for a catalog row with an empty price."""
    v = ver8(catalog_version)
    en = f"Catalog {v} has no price for {item}. What is its quote price in KRW?"
    ko = f"카탈로그({v})에 {item}의 단가가 없습니다. 견적 단가(원)를 알려 주세요."
    return en, ko


def question_custom_enclosure(
    *, width_mm: int, height_mm: int, depth_mm: int, material: str, location: str
) -> tuple[str, str]:
    """§11 question for a custom enclosure without ``custom_price_krw``."""
    size = f"{width_mm}×{height_mm}×{depth_mm}"
    en = (
        f"No stock enclosure fits {size} mm ({material}, {location}) or a custom box was requested. "
        "What is the fabrication price in KRW?"
    )
    ko = (
        f"{size}mm({_MATERIAL_KO.get(material, material)}, {_LOCATION_KO.get(location, location)})에 "
        "맞는 기성함이 없거나 주문제작함이 요청되었습니다. 제작 외함 단가(원)를 알려 주세요."
    )
    return en, ko


class ReviewBook:
    """Collects review reasons in raise order and hands out the reviewer's resolutions (§11).

    Resolutions whose ``reason_id`` names no raised reason are ignored here; CompleteReview
    validates them (``REVIEW_INCOMPLETE``) before the engine re-prices.
    """

    def __init__(self, resolutions: Mapping[str, Resolution] | None = None) -> None:
        self._resolutions: Mapping[str, Resolution] = resolutions or {}
        self._reasons: list[ReviewReason] = []

    def raise_reason(self, code: str, path: str, question: tuple[str, str]) -> tuple[str, Resolution | None]:
        """Raise the next reason; returns its id and the resolution answering it, if any."""
        reason_id = f"R{len(self._reasons) + 1}"
        resolution = self._resolutions.get(reason_id)
        if resolution is not None and resolution.reason_id != reason_id:
            resolution = replace(resolution, reason_id=reason_id)
        en, ko = question
        self._reasons.append(ReviewReason(reason_id, code, path, en, ko, resolution))
        return reason_id, resolution

    @property
    def reasons(self) -> tuple[ReviewReason, ...]:
        return tuple(self._reasons)

    @property
    def all_resolved(self) -> bool:
        return all(reason.resolution is not None for reason in self._reasons)

    def rules(self) -> tuple[RuleApplication, ...]:
        """``REV-1`` per raised reason and ``REV-R`` per applied resolution."""
        out = []
        for reason in self._reasons:
            out.append(RuleApplication("REV-1", reason.path, f"{reason.reason_id} {reason.code}"))
            res = reason.resolution
            if res is not None:
                model = "" if res.model is None else f"model {res.model}, "
                out.append(
                    RuleApplication(
                        "REV-R",
                        reason.path,
                        f"{reason.reason_id}: {model}unit_price_krw={res.unit_price_krw}",
                    )
                )
        return tuple(out)
