"""SMS encoding and segments (``spotzee.domain.sms_segments``): GSM 03.38 basic set and extension
table, the 160/153 and 70/67 limits, parts never splitting an escape or a surrogate pair."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotzee.domain.sms_segments import GSM7_BASIC, GSM7_EXTENSION, SmsSize, encoding_of, sms_size

BASIC = sorted(GSM7_BASIC)
EXTENSION = sorted(GSM7_EXTENSION)


def test_the_alphabets_are_gsm_03_38() -> None:
    # 128 positions minus ESC (0x1B) in the basic set; ten characters in the extension table.
    assert len(GSM7_BASIC) == 127
    assert frozenset("\f^{}\\[~]|€") == GSM7_EXTENSION
    assert not GSM7_BASIC & GSM7_EXTENSION
    for ch in "@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà\n\r !?09AZaz":
        assert ch in GSM7_BASIC
    for ch in "çÀ`áíóúâêîôûëïÿ":  # look Latin, are not in the default alphabet
        assert ch not in GSM7_BASIC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SmsSize("GSM-7", 0, 0)),
        ("Hi", SmsSize("GSM-7", 2, 1)),
        ("a" * 160, SmsSize("GSM-7", 160, 1)),
        ("a" * 161, SmsSize("GSM-7", 161, 2)),
        ("a" * 306, SmsSize("GSM-7", 306, 2)),
        ("a" * 307, SmsSize("GSM-7", 307, 3)),
        ("€" * 80, SmsSize("GSM-7", 160, 1)),  # extension characters count as two septets
        ("€" * 81, SmsSize("GSM-7", 162, 2)),
        ("€" * 153, SmsSize("GSM-7", 306, 3)),  # 76 per part (152 septets): an escape never split
        ("a" * 152 + "€" + "a" * 7, SmsSize("GSM-7", 161, 2)),
        ("a" * 152 + "€" + "a" * 151 + "€", SmsSize("GSM-7", 307, 3)),  # 152 | 2+151 | 2
        ("a" * 159 + "[", SmsSize("GSM-7", 161, 2)),
        ("Grüße, Jürgen", SmsSize("GSM-7", 13, 1)),  # ü and ß are in the basic set
        ("ç", SmsSize("UCS-2", 1, 1)),
        ("ç" * 70, SmsSize("UCS-2", 70, 1)),
        ("ç" * 71, SmsSize("UCS-2", 71, 2)),
        ("ç" * 134, SmsSize("UCS-2", 134, 2)),
        ("ç" * 135, SmsSize("UCS-2", 135, 3)),
        ("😀" * 35, SmsSize("UCS-2", 70, 1)),  # a surrogate pair is two units
        ("😀" * 36, SmsSize("UCS-2", 72, 2)),
        ("😀" * 67, SmsSize("UCS-2", 134, 3)),  # 33 per part (66 units): a pair is never split
        ("Hello 👋", SmsSize("UCS-2", 8, 1)),
    ],
)
def test_size_table(text: str, expected: SmsSize) -> None:
    assert sms_size(text) == expected


@given(st.text(alphabet=st.sampled_from(BASIC), max_size=800))
def test_basic_set_counts_one_septet_each(text: str) -> None:
    size = sms_size(text)
    assert size.encoding == "GSM-7"
    assert size.units == len(text)
    expected = 0 if not text else 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    assert size.segments == expected


@given(st.text(alphabet=st.sampled_from(BASIC + EXTENSION), max_size=600))
def test_parts_hold_whole_characters(text: str) -> None:
    size = sms_size(text)
    assert size.encoding == "GSM-7"
    septets = len(text) + sum(ch in GSM7_EXTENSION for ch in text)
    assert size.units == septets
    if septets <= 160:
        assert size.segments == (1 if text else 0)
    else:
        # at least the plain count, at most one more part per 76 escapes split off
        assert math.ceil(septets / 153) <= size.segments <= math.ceil(septets / 152)


@given(st.text(min_size=1, max_size=400))
def test_any_character_outside_the_alphabet_makes_it_ucs2(text: str) -> None:
    outside = any(ch not in GSM7_BASIC and ch not in GSM7_EXTENSION for ch in text)
    assert (encoding_of(text) == "UCS-2") == outside
    size = sms_size(text)
    if size.encoding == "UCS-2":
        units = len(text.encode("utf-16-le")) // 2
        assert size.units == units
        if units <= 70:
            assert size.segments == 1
        else:
            assert math.ceil(units / 67) <= size.segments <= math.ceil(units / 66)
