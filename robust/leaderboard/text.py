"""Entry text made safe to print: what a name or flag may hold is shown, never obeyed.

Entry fields come from files anyone can write, so before a terminal sees them every escape
sequence (ANSI CSI such as clear-screen, OSC such as window titles and hyperlinks, DCS/APC/PM/SOS
strings), every C0 and C1 control character (BEL, backspace, carriage return, ...) and every bidi
control (which reorders what follows it on screen) is removed; line and tab breaks become a space.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["BIDI_CONTROLS", "plain"]

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"  # CSI: parameters, intermediates, final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC strings
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"  # any other escape sequence (charset selection, RIS, ...)
)
_SPACES = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f" + BIDI_CONTROLS + "]")


def plain(value: Any) -> str:
    """``str(value)`` without escape sequences, control characters or bidi controls (None: "")."""
    text = "" if value is None else str(value)
    return _CONTROLS.sub("", _SPACES.sub(" ", _ESCAPES.sub("", text)))
