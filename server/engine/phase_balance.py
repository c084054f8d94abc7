"""Phase balance, advisory (docs/pricing-rules.md §14, rule ``[PHB-1]``).

Currents are kept exactly in sixths of an ampere (a/3 = 2a sixths, a/2 = 3a sixths), so the whole
computation is integer; R, S, T and the imbalance are rounded half-up to 2 decimals only for the
report. The 4.0 % threshold is tested on the exact ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from kis_estimator.server.engine.model import PhaseBalance

__all__ = [
    "PhaseResult",
    "half_up_2",
    "phase_balance",
]

IMBALANCE_LIMIT_PCT = Fraction(4)
_LIMIT_NUMERATOR, _LIMIT_DENOMINATOR = IMBALANCE_LIMIT_PCT.as_integer_ratio()
_PAIRS = ((0, 1), (1, 2), (2, 0))  # R-S, S-T, T-R: also the tie order (§14)
_PAIR_NAMES = ("R-S", "S-T", "T-R")
_CENTS = Decimal("0.01")


def half_up_2(value: Fraction) -> Decimal:
    """An exact value rounded half-up to 2 decimals (§1 "half-up")."""
    scaled = value * 100
    sign = -1 if scaled < 0 else 1
    magnitude = abs(scaled)
    cents = (magnitude.numerator * 2 + magnitude.denominator) // (2 * magnitude.denominator)
    return (Decimal(sign * cents) / 100).quantize(_CENTS, rounding=ROUND_HALF_UP)


def _half_up_2_of_ratio(numerator: int, denominator: int) -> Decimal:
    """``half_up_2(Fraction(numerator, denominator))`` for numerator ≥ 0 < denominator, in integers.

    floor(n/d × 100 + ½) does not depend on how n/d is written, so the result is the same without
    building (and normalising) Fractions: phase balance runs on every estimate.
    """
    cents = (numerator * 200 + denominator) // (2 * denominator)
    return (Decimal(cents) / 100).quantize(_CENTS, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """The reported balance, the exact imbalance (None when not applicable) and the trace step."""

    balance: PhaseBalance
    exact_pct: Fraction | None
    exceeds_limit: bool
    trace: dict[str, Any]


def phase_balance(main_poles: int, branches: Sequence[tuple[int, int, int]]) -> PhaseResult:
    """Book branch lines (poles, trip_at, qty) on R/S/T per §14; main and SPD MCCB are not booked."""
    if main_poles == 2:
        trace: dict[str, Any] = {"step": "phase_balance", "applicable": False, "reason": "main is 2P"}
        return PhaseResult(PhaseBalance(applicable=False), None, False, trace)
    sixths = [0, 0, 0]
    three_phase = 0
    for poles, trip_at, qty in branches:
        if poles in (3, 4):
            three_phase += 2 * trip_at * qty
    for k in range(3):
        sixths[k] += three_phase
    # 2P units: by AT descending, then line index (the sort is stable over line order).
    two_pole = sorted(
        ((trip_at, qty) for poles, trip_at, qty in branches if poles == 2), key=lambda item: -item[0]
    )
    counts = [0, 0, 0]
    for trip_at, qty in two_pole:
        add = 3 * trip_at
        for _ in range(qty):
            best = 0
            best_sum = sixths[0] + sixths[1]
            s_t = sixths[1] + sixths[2]
            if s_t < best_sum:
                best, best_sum = 1, s_t
            if sixths[2] + sixths[0] < best_sum:
                best = 2
            a, b = _PAIRS[best]
            sixths[a] += add
            sixths[b] += add
            counts[best] += 1
    # In sixths of an ampere: phase k carries sixths[k] / 6 A; the mean is total / 18 A, so the
    # imbalance (max − min) / mean × 100 is 300 × (max − min) / total %.
    total = sum(sixths)
    spread = 300 * (max(sixths) - min(sixths))
    pct = Fraction(0) if total == 0 else Fraction(spread, total)
    exceeds = spread * _LIMIT_DENOMINATOR > _LIMIT_NUMERATOR * total  # pct > limit, in integers
    balance = PhaseBalance(
        applicable=True,
        r_a=_half_up_2_of_ratio(sixths[0], 6),
        s_a=_half_up_2_of_ratio(sixths[1], 6),
        t_a=_half_up_2_of_ratio(sixths[2], 6),
        imbalance_pct=_half_up_2_of_ratio(spread, total) if total else half_up_2(pct),
    )
    trace = {
        "step": "phase_balance",
        "applicable": True,
        "R": str(balance.r_a),
        "S": str(balance.s_a),
        "T": str(balance.t_a),
        "two_pole_units_by_pair": dict(zip(_PAIR_NAMES, counts, strict=True)),
        "imbalance_pct": str(balance.imbalance_pct),
        "limit_pct": "4.0",
        "warning": exceeds,
    }
    return PhaseResult(balance, pct, exceeds, trace)
