"""Reading what a request says about itself: cookies, query parameters, signed pins.

All input is bytes straight from the wire and may be hostile (invalid UTF-8, duplicates,
no ``=``, 64 KiB values); nothing here raises on it. Ambiguity (a name given twice) is
reported as :data:`AMBIGUOUS`, so callers can refuse rather than pick one.

Signed pins (``trust: hmac``) read ``VERSION.EXPIRES.SIGNATURE``: ``EXPIRES`` is a Unix
time in seconds, ``SIGNATURE`` the unpadded URL-safe base64 of the first 16 bytes of
HMAC-SHA256(key, ``VERSION.EXPIRES``). ``junction extproc sign-pin`` mints them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

__all__ = [
    "AMBIGUOUS",
    "MALFORMED",
    "PinCheck",
    "parse_cookies",
    "query_param",
    "sign_pin",
    "verify_pin",
]

#: A name that appears more than once (cookies, query parameters, headers).
AMBIGUOUS: Final = b"\x00ambiguous"
#: Returned by :func:`parse_cookies` under this key when some pair had no ``=``.
MALFORMED: Final = b"\x00malformed"

_SIG_BYTES = 16


def parse_cookies(values: list[bytes]) -> dict[bytes, bytes]:
    """``Cookie`` header values -> name -> value (quotes removed).

    Several ``Cookie`` headers (HTTP/2 may split them) are read as one. A name given twice
    maps to :data:`AMBIGUOUS`; a pair without ``=`` is skipped and flagged under
    :data:`MALFORMED`.
    """
    out: dict[bytes, bytes] = {}
    for value in values:
        for part in value.split(b";"):
            name, eq, val = part.strip().partition(b"=")
            if not eq or not name:
                if part.strip():
                    out[MALFORMED] = b""
                continue
            name = name.strip()
            val = val.strip()
            if len(val) >= 2 and val[0] == 0x22 and val[-1] == 0x22:  # "quoted"
                val = val[1:-1]
            out[name] = AMBIGUOUS if name in out else val
    return out


def query_param(path: bytes, name: bytes) -> bytes | None:
    """The value of query parameter ``name`` in ``path`` (not percent-decoded), None when
    absent, :data:`AMBIGUOUS` when given twice."""
    q = path.find(b"?")
    if q < 0:
        return None
    end = path.find(b"#", q)
    found: bytes | None = None
    for pair in path[q + 1 : end if end >= 0 else None].split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == name:
            if found is not None:
                return AMBIGUOUS
            found = value
    return found


def _signature(key: bytes, message: bytes) -> bytes:
    mac = hmac.new(key, message, hashlib.sha256).digest()[:_SIG_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=")


def sign_pin(key: bytes, version: str, expires: int) -> str:
    """A pin for ``version`` valid until ``expires`` (Unix seconds), signed with ``key``."""
    message = f"{version}.{expires}".encode()
    return (message + b"." + _signature(key, message)).decode()


class PinCheck:
    """Outcomes of :func:`verify_pin` besides a version."""

    MALFORMED: Final = "malformed"
    BAD_SIGNATURE: Final = "bad-signature"
    EXPIRED: Final = "expired"


def verify_pin(key: bytes, pin: bytes, now: float) -> tuple[bytes | None, str]:
    """``(version, "")`` for a valid, unexpired signed pin; ``(None, reason)`` otherwise."""
    parts = pin.rsplit(b".", 2)
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None, PinCheck.MALFORMED
    version, expires, sig = parts
    if not hmac.compare_digest(_signature(key, version + b"." + expires), sig):
        return None, PinCheck.BAD_SIGNATURE
    if int(expires) < now:
        return None, PinCheck.EXPIRED
    return version, ""
