"""How an SMS body is encoded and into how many segments it is split (pure).

A body made only of characters of the GSM 03.38 default alphabet (its basic set, plus the
extension table reached through an escape: ``^ { } \\ [ ~ ] | €`` and form feed, two septets each)
goes as **GSM-7**: up to 160 septets in one message, or concatenated parts of 153 septets (the
user data header takes the other 7). Any other character makes the whole body **UCS-2** (UTF-16
code units): up to 70 in one message, or parts of 67; a character outside the Basic Multilingual
Plane (an emoji) is a surrogate pair, two units.

Parts are filled the way handsets and carriers split them: an escape and its character, or the
two halves of a surrogate pair, are never split across parts, so a part may hold one unit less
than its maximum. An empty body is zero segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Encoding = Literal["GSM-7", "UCS-2"]

# The basic character set of GSM 03.38 (3GPP TS 23.038 6.2.1), in table order; ESC (0x1B) omitted.
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table (6.2.1.1): each is sent as ESC + character, two septets.
GSM7_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE: Final = 160
GSM7_PART: Final = 153
UCS2_SINGLE: Final = 70
UCS2_PART: Final = 67


@dataclass(frozen=True)
class SmsSize:
    """``units``: septets (GSM-7) or UTF-16 code units (UCS-2) of the whole body."""

    encoding: Encoding
    units: int
    segments: int


def encoding_of(text: str) -> Encoding:
    """GSM-7 when every character is in the default alphabet (basic set or extension), else UCS-2."""
    return "GSM-7" if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text) else "UCS-2"


def _widths(text: str, encoding: Encoding) -> list[int]:
    """Each character's size in units: what may not be split between parts."""
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _parts(widths: list[int], part: int) -> int:
    """Parts of at most ``part`` units, filled in order, a character never split."""
    count, used = 1, 0
    for width in widths:
        if used + width > part:
            count, used = count + 1, 0
        used += width
    return count


def sms_size(text: str) -> SmsSize:
    """The encoding, units and segment count of ``text`` as one SMS body."""
    encoding = encoding_of(text)
    widths = _widths(text, encoding)
    units = sum(widths)
    single, part = (GSM7_SINGLE, GSM7_PART) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_PART)
    if units == 0:
        segments = 0
    elif units <= single:
        segments = 1
    else:
        segments = _parts(widths, part)
    return SmsSize(encoding, units, segments)
