"""Korean amounts in words (server/api/quote/words.py), against worked values and an independent spelling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kis_estimator.server.api.quote.words import MAX_AMOUNT, amount_in_words, quote_amount_text


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (0, "영"),
        (1, "일"),
        (10, "일십"),
        (11, "일십일"),
        (100, "일백"),
        (1_000, "일천"),
        (10_000, "일만"),
        (10_001, "일만일"),
        (100_000, "일십만"),
        (495_385, "사십구만오천삼백팔십오"),  # S01's total
        (1_134_100, "일백일십삼만사천일백"),
        (20_000_000, "이천만"),
        (100_000_000, "일억"),
        (100_000_001, "일억일"),
        (1_000_010_000, "일십억일만"),
        (999_999_999_999, "구천구백구십구억구천구백구십구만구천구백구십구"),
        (1_000_000_000_000, "일조"),
        (MAX_AMOUNT, "구조구천구백구십구억구천구백구십구만구천구백구십구"),
    ],
)
def test_worked_amounts(amount: int, words: str) -> None:
    assert amount_in_words(amount) == words


def test_the_quote_line() -> None:
    assert quote_amount_text(1_134_100) == "일금 일백일십삼만사천일백원정 (₩1,134,100)"


@pytest.mark.parametrize("bad", [-1, MAX_AMOUNT + 1, 1.5, True, "100"])
def test_out_of_range_or_not_an_integer_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="expected an integer"):
        amount_in_words(bad)  # type: ignore[arg-type]


_UNITS = {1: "십", 2: "백", 3: "천", 4: "만", 8: "억", 12: "조"}
_NAMES = "영일이삼사오육칠팔구"


def independent_spelling(amount: int) -> str:
    """Digit by digit from the left: the digit's name and its place's unit, the group unit once."""
    if amount == 0:
        return "영"
    text = str(amount)
    out = []
    group_has_digit = False
    for i, ch in enumerate(text):
        place = len(text) - 1 - i
        digit = int(ch)
        if digit:
            out.append(_NAMES[digit] + _UNITS.get(place % 4, ""))
            group_has_digit = True
        if place % 4 == 0 and place > 0:
            if group_has_digit:
                out.append(_UNITS[place])
            group_has_digit = False
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_agrees_with_an_independent_spelling(amount: int) -> None:
    assert amount_in_words(amount) == independent_spelling(amount)
