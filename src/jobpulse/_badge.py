"""Status badges: small self-contained SVG images in the flat look of shields.io.

Standard library only. The text is escaped for XML (a job name is user input), characters
XML cannot hold are dropped, and a long label is cut short (the whole name stays in the
image's title). Each part is as wide as its text: the widths below are those of DejaVu
Sans at 11 px (what a browser without Verdana draws), and ``textLength`` makes the drawn
text fit its part whatever font the viewer has.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from xml.sax.saxutils import escape

__all__ = ["COLOURS", "MAX_LABEL", "badge_svg", "badge_tag"]

#: A colour by word: the overall health and each job state.
COLOURS = {
    "healthy": "#4c1",
    "degraded": "#fe7d37",
    "unhealthy": "#e05d44",
    "success": "#4c1",
    "running": "#007ec6",
    "pending": "#9f9f9f",
    "failed": "#e05d44",
    "stalled": "#e05d44",
    "missed": "#fe7d37",
    "not found": "#9f9f9f",
}
_DEFAULT_COLOUR = "#9f9f9f"
#: The longest label drawn; a longer one ends with an ellipsis.
MAX_LABEL = 60

# Advance widths of " " to "~" in DejaVu Sans at 11 px, in tenths of a pixel.
_ASCII_WIDTHS = (
    35, 44, 51, 92, 70, 105, 86, 30, 43, 43, 55, 92, 35, 40, 35, 37,
    70, 70, 70, 70, 70, 70, 70, 70, 70, 70, 37, 37, 92, 92, 92, 58,
    110, 75, 75, 77, 85, 70, 63, 85, 83, 32, 32, 72, 61, 95, 82, 87,
    66, 87, 76, 70, 67, 81, 75, 109, 75, 67, 75, 43, 37, 43, 92, 55,
    55, 67, 70, 60, 70, 68, 39, 70, 70, 31, 31, 64, 31, 107, 70, 67,
    70, 70, 45, 57, 43, 70, 65, 90, 65, 65, 58, 70, 37, 70, 92,
)  # fmt: skip
_WIDE = 110  # an east Asian wide character: one em
_OTHER = 70  # any other character: about the average letter
# What XML 1.0 cannot hold, even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PADDING = 50  # tenths of a pixel each side of a text


def _width(text: str) -> int:
    """The text's width at 11 px, in tenths of a pixel."""
    total = 0
    for char in text:
        code = ord(char)
        if 32 <= code < 127:
            total += _ASCII_WIDTHS[code - 32]
        elif unicodedata.combining(char):
            continue
        elif unicodedata.east_asian_width(char) in "WF":
            total += _WIDE
        else:
            total += _OTHER
    return total


def _clean(text: str, limit: int) -> str:
    text = _NOT_XML.sub("", text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def badge_svg(label: str, message: str, colour: str | None = None) -> bytes:
    """A flat badge: `label` on grey, `message` on `colour` (default: the colour of the
    word `message` in `COLOURS`, else grey). UTF-8 SVG."""
    colour = colour or COLOURS.get(message, _DEFAULT_COLOUR)
    title = escape(_clean(f"{label}: {message}", 1000), {'"': "&quot;"})
    label = _clean(label, MAX_LABEL)
    message = _clean(message, MAX_LABEL)
    label_text, message_text = _width(label), _width(message)
    # Whole pixels for the parts, tenths (the text is drawn at scale(.1)) inside them.
    left = (label_text + 2 * _PADDING + 9) // 10
    right = (message_text + 2 * _PADDING + 9) // 10
    total = left + right
    label_x = left * 5
    message_x = left * 10 + right * 5
    # Ids of its own: a page that holds several badges inline keeps each one's clip.
    ident = hashlib.blake2b(f"{label}\0{message}\0{colour}".encode(), digest_size=6).hexdigest()
    label, message = escape(label), escape(message)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img"'
        f' aria-label="{title}"><title>{title}</title>'
        f'<linearGradient id="s{ident}" x2="0" y2="100%"><stop offset="0" stop-color="#bbb"'
        ' stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r{ident}"><rect width="{total}" height="20" rx="3" fill="#fff"/>'
        f'</clipPath><g clip-path="url(#r{ident})"><rect width="{left}" height="20"'
        f' fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        f'<rect width="{total}" height="20" fill="url(#s{ident})"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,'
        'sans-serif" text-rendering="geometricPrecision" font-size="110">'
        f'<text aria-hidden="true" x="{label_x}" y="150" fill="#010101" fill-opacity=".3"'
        f' transform="scale(.1)" textLength="{label_text}">{label}</text>'
        f'<text x="{label_x}" y="140" transform="scale(.1)" fill="#fff"'
        f' textLength="{label_text}">{label}</text>'
        f'<text aria-hidden="true" x="{message_x}" y="150" fill="#010101" fill-opacity=".3"'
        f' transform="scale(.1)" textLength="{message_text}">{message}</text>'
        f'<text x="{message_x}" y="140" transform="scale(.1)" fill="#fff"'
        f' textLength="{message_text}">{message}</text></g></svg>'
    ).encode()


def badge_tag(svg: bytes) -> str:
    """An entity tag of the badge's bytes; weak, as a proxy that compresses the badge
    would have to make it."""
    return f'W/"{hashlib.blake2b(svg, digest_size=8).hexdigest()}"'
