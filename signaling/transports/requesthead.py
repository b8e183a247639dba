"""
The head of a common HTTP request (a WebSocket upgrade, mostly), parsed
once: the site's routing reads it to choose the upgrade's factory, and the
fast handshake (L{signaling.fastpath}) takes the same parse instead of
reading the bytes again.

Common means what every browser and WebSocket library sends: a C{GET} of an
absolute path over HTTP/1.1, printable ASCII lines ending in CRLF, each
header once, with a colon right after its name. Anything else is left to
twisted.web and Autobahn, which judge it as they always did.
"""

from __future__ import annotations

import re

#: A whole common head, checked in one pass in C: the request line with
#: single spaces, then header lines whose names are printable ASCII without
#: spaces or colons (so no line is folded, and no name has white space
#: around it) and whose values are printable ASCII and tabs.
_COMMON_HEAD = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n((?:[!-9;-~]+:[\t -~]*\r\n)*)\r\n"
)


class RequestHead:
    """
    A common request head (L{parse_request_head}).

    :ivar raw: The head as it arrived, its empty last line included.
    :ivar uri: The request's target, as sent.
    :ivar path: The target without its query.
    :ivar query: The target's query, without the C{?}; empty if none.
    :ivar headers: Each header's value, stripped, by its lower-case name.
    """

    __slots__ = ("raw", "uri", "path", "query", "headers")

    def __init__(
        self, raw: bytes, uri: str, path: str, query: str, headers: dict[str, str]
    ) -> None:
        self.raw = raw
        self.uri = uri
        self.path = path
        self.query = query
        self.headers = headers

    @property
    def status_line(self) -> str:
        return f"GET {self.uri} HTTP/1.1"


def parse_request_head(head: bytes) -> RequestHead | None:
    """
    C{head}, the bytes of a whole request head up to and including its
    empty last line, parsed if it is common (see the module's docstring);
    else None.
    """
    match = _COMMON_HEAD.fullmatch(head)
    if match is None:
        return None
    uri = match.group(1).decode("ascii")
    lines = match.group(2).decode("ascii").split("\r\n")
    # (The split leaves an empty string after the last CRLF.)
    lines.pop()
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    if len(headers) != len(lines):
        # A header twice: how to read it is for twisted.web or Autobahn.
        return None
    path, _, query = uri.partition("?")
    return RequestHead(head, uri, path, query, headers)
