"""Amounts in Korean words as Korean quotes write them: ``일금 일백일십삼만사천일백원정``.

Quote practice (견적서, 세금계산서) spells the total so that nothing can be added in front of it or
after it: the prefix 일금 ("the sum of"), the suffix 원정 ("won, exactly"), and 일 written before
십, 백 and 천 (일백, not 백), and before 만/억/조 when their group is one (일만, 일억). Digits are
grouped by four from the right; the group units are 만 (10⁴), 억 (10⁸) and 조 (10¹²); a group of
zeros is left out, and so is every zero digit. Amounts up to 9,999,999,999,999 (just under 10조)
are spelled; the API's totals stay far below that.
"""

from __future__ import annotations

__all__ = ["MAX_AMOUNT", "amount_in_words", "quote_amount_text"]

MAX_AMOUNT = 10**13 - 1
_DIGITS = ("", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구")
_IN_GROUP = ("", "십", "백", "천")  # units inside a group of four digits, from the right
_GROUPS = ("", "만", "억", "조")  # units of the groups, from the right


def _group(value: int) -> str:
    """0 < value < 10,000 in words, 일 always written (일천일백일십일)."""
    out = []
    for position in range(3, -1, -1):
        digit = value // 10**position % 10
        if digit:
            out.append(_DIGITS[digit] + _IN_GROUP[position])
    return "".join(out)


def amount_in_words(amount: int) -> str:
    """``1134100`` → ``일백일십삼만사천일백``; ``0`` → ``영``. ValueError outside 0…MAX_AMOUNT."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"amount {amount!r}: expected an integer from 0 to {MAX_AMOUNT:,}")
    if amount == 0:
        return "영"
    parts = []
    for index in range(len(_GROUPS) - 1, -1, -1):
        group = amount // 10_000**index % 10_000
        if group:
            parts.append(_group(group) + _GROUPS[index])
    return "".join(parts)


def quote_amount_text(amount: int) -> str:
    """The line a 견적서 prints: ``일금 일백일십삼만사천일백원정 (₩1,134,100)``."""
    return f"일금 {amount_in_words(amount)}원정 (₩{amount:,})"
