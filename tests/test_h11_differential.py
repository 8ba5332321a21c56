"""Differential check of the HTTP core against h11 on generated requests.

Theory of operation: hypothesis builds one request from parts and a set of *quirks* (odd
whitespace, obs-fold, duplicate or listed Content-Length, Content-Length with
Transfer-Encoding, chunk extensions and trailers, bare LF, NUL/CTL characters, unknown
methods, HTTP/1.0, missing or duplicate Host...). The bytes go to our
:class:`~server.http11.RequestParser` and to an ``h11.Connection(h11.SERVER)``. Either both
accept, and then method, target, version, headers and body must agree, or both reject. When
they disagree, the quirks of that request must include one listed in :data:`WE_REJECT` (we
refuse what h11 takes) or :data:`WE_ACCEPT` (we take what h11 refuses), each with the reason
RFC 9112/9110 allows the difference; ``docs/hardening.md`` explains them at length. Anything
else is a failure, which is the point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import Config
from server.exchange import RequestHead
from server.http11 import END, ProtocolError, RequestParser

EXAMPLES = 200 if os.environ.get("NETPOLL_HYPOTHESIS_PROFILE") != "long" else 8000
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: quirk -> why we may reject what h11 accepts
WE_REJECT: dict[str, str] = {
    "unknown_method": "llhttp knows a fixed method list; RFC 9110 §9.1: 501 for an "
    "unrecognised method is allowed (we answer 400)",
    "lower_method": "methods are case-sensitive (RFC 9110 §9.1); llhttp only knows upper-case",
    "obs_fold": "RFC 9112 §5.2: a server MUST either reject obs-fold with 400 or unfold it",
    "dup_cl_same": "RFC 9112 §6.3 (5): identical duplicate Content-Length MAY be rejected",
    "cl_list": "RFC 9112 §6.3 (5): a Content-Length list MAY be rejected",
    "cl_te": "RFC 9112 §6.1: a server MAY reject a request with both Content-Length and "
    "Transfer-Encoding (it is a request-smuggling vector)",
    "dup_host": "RFC 9112 §3.2: a server MUST answer 400 to more than one Host field",
    "te_http10": "RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is a framing fault; MUST "
    "close after answering; rejecting is the safe reading",
    "no_host_newer_minor": "RFC 9110 §2.5: HTTP/1.2+ is handled as 1.1, which MUST have a "
    "Host (RFC 9112 §3.2); h11 checks Host on 1.1 only",
    "fragment": "'#' is not allowed in a request-target (RFC 9112 §3.2); llhttp accepts it "
    "and we drop the fragment; h11 accepts it in the target",
    "target_ctl": "CTLs are not allowed in a request-target; h11 accepts them",
    "target_nonascii": "non-ASCII bytes are not allowed in a request-target (RFC 3986); "
    "llhttp refuses them, h11 is lax",
    "chunk_ext_bad": "malformed chunk-ext (RFC 9112 §7.1.1); h11 skips extensions unparsed",
    "bare_cr": "RFC 9112 §2.2: a bare CR MUST be rejected or replaced by SP",
    "bare_lf": "RFC 9112 §2.2: a recipient MAY accept a bare LF as a line terminator; "
    "we do not (llhttp strict mode), h11 does",
    "bare_lf_chunk": "as bare_lf, in a chunk-size line",
    "ctl_value": "RFC 9110 §5.5: CTLs other than NUL/CR/LF in a field value are invalid; a "
    "recipient MAY retain them (h11 does) or reject (llhttp, us)",
}
#: quirk -> why we may accept what h11 rejects
WE_ACCEPT: dict[str, str] = {
    "leading_crlf": "RFC 9112 §2.2: a server SHOULD ignore at least one empty line before "
    "the request-line; h11 does not",
    "absolute_h10": "absolute-form is allowed in HTTP/1.0 requests too",
    "host_empty": "an empty Host is valid when the target URI has no authority (RFC 9112 §3.2)",
}


@dataclass
class Gen:
    """A generated request: its bytes, its quirks and what a correct parse must yield."""

    wire: bytes
    quirks: set[str] = field(default_factory=set)


@st.composite
def requests(draw: st.DrawFn) -> Gen:
    q: set[str] = set()
    pick = draw

    def maybe(name: str, p: int = 8) -> bool:
        hit = pick(st.integers(0, p - 1)) == 0
        if hit:
            q.add(name)
        return hit

    method = pick(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"HEAD"]))
    if maybe("unknown_method", 12):
        method = pick(st.sampled_from([b"FOO", b"BREW", b"X-Y"]))
    elif maybe("lower_method", 12):
        method = method.lower()
    target = pick(st.sampled_from([b"/", b"/a/b", b"/a%20b?x=1&y", b"/p?", b"/;m=1"]))
    if maybe("asterisk", 16):
        target, method = b"*", b"OPTIONS"
        q.discard("unknown_method")
        q.discard("lower_method")
    elif maybe("absolute", 12):
        target = b"http://example.test:8080/abs?q=1"
    elif maybe("fragment", 16):
        target += b"#frag"
    elif maybe("target_ctl", 16):
        target = b"/a" + pick(st.sampled_from([b"\x01", b"\x7f", b"\x00"])) + b"b"
    elif maybe("target_nonascii", 16):
        target = b"/caf\xc3\xa9"
    version = pick(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    if maybe("version_other", 16):
        version = pick(st.sampled_from([b"HTTP/1.2", b"HTTP/1.9"]))
    if "absolute" in q and version == b"HTTP/1.0":
        q.add("absolute_h10")
    eol = b"\r\n"
    if maybe("bare_lf", 12):
        eol = b"\n"
    lines: list[bytes] = [method + b" " + target + b" " + version]
    host = version != b"HTTP/1.0"
    if host and maybe("no_host", 16):
        host = False
        if "version_other" in q:
            q.add("no_host_newer_minor")
    if host:
        if maybe("host_empty", 16):
            lines.append(b"Host:")
        else:
            lines.append(b"Host: example.test")
        if maybe("dup_host", 16):
            lines.append(b"Host: other.test")
    for _ in range(pick(st.integers(0, 3))):
        name = pick(st.sampled_from([b"X-A", b"accept", b"User-Agent", b"x_u", b"X-Dup"]))
        value = pick(st.sampled_from([b"v", b"a b", b"a\tb", b"", b"\x80\xff", b"q=0.5, *"]))
        pre = pick(st.sampled_from([b"", b" ", b"\t", b" \t "]))
        post = pick(st.sampled_from([b"", b" ", b"\t"]))
        sep = b":"
        if maybe("space_before_colon", 24):
            sep = b" :"
        if maybe("nul_value", 32):
            value += b"\x00"
        elif maybe("ctl_value", 24):
            value += pick(st.sampled_from([b"\x01", b"\x7f", b"\x1b"]))
        if maybe("bare_cr", 32):
            value += b"\rx"
        lines.append(name + sep + pre + value + post)
        if maybe("obs_fold", 24):
            lines.append(b" folded")
    if maybe("empty_name", 32):
        lines.append(b": v")
    body = pick(st.binary(max_size=40))
    framing = pick(st.sampled_from(["cl", "chunked", "none"]))
    payload = b""
    if framing == "cl" or (framing == "none" and body):
        cl = b"%d" % len(body)
        if maybe("cl_plus", 24):
            cl = b"+" + cl
        lines.append(b"Content-Length: " + cl)
        if maybe("dup_cl_same", 16):
            lines.append(b"Content-Length: " + cl)
        elif maybe("dup_cl_diff", 24):
            lines.append(b"Content-Length: %d" % (len(body) + 1))
        elif maybe("cl_list", 24):
            lines[-1] += b", " + cl
        if maybe("cl_te", 16):
            lines.append(b"Transfer-Encoding: chunked")
            payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        else:
            payload = body
    elif framing == "chunked":
        te = pick(st.sampled_from([b"chunked", b"chunked", b"Chunked"]))
        if maybe("te_gzip", 16):
            te = b"gzip, chunked"
        lines.append(b"Transfer-Encoding: " + te)
        if version == b"HTTP/1.0":
            q.add("te_http10")
        rest = body
        while rest:
            n = pick(st.integers(1, len(rest)))
            ext = pick(st.sampled_from([b"", b";a=b", b";x", b';n="q s"']))
            if maybe("chunk_ext_bad", 24):
                ext = pick(st.sampled_from([b";", b";=x", b"; a", b";a=b c"]))
            size_eol = b"\r\n"
            if maybe("bare_lf_chunk", 24):
                size_eol = b"\n"
            payload += b"%x%s%s%s\r\n" % (n, ext, size_eol, rest[:n])
            rest = rest[n:]
        payload += b"0\r\n"
        if pick(st.booleans()):
            payload += b"X-Trailer: t\r\n"
        payload += b"\r\n"
    head = eol.join(lines) + eol + eol
    if maybe("leading_crlf", 16):
        head = b"\r\n" + head
    return Gen(head + payload, q)


Outcome = tuple[object, ...]


def ours(data: bytes) -> Outcome:
    p = RequestParser(Config())
    pos = 0
    while pos < len(data) and not p.dead:
        pos = p.feed(data, pos)
    head: RequestHead | None = None
    body = b""
    for ev in p.events:
        if isinstance(ev, ProtocolError):
            return ("reject", ev.status)
        if isinstance(ev, RequestHead):
            head = ev
        elif type(ev) is bytes:
            body += ev
        elif ev is END and head is not None:
            target = head.raw_path + (b"?" + head.query_string if head.query_string else b"")
            return ("accept", head.method.encode(), target, head.http_version, head.headers, body)
    return ("incomplete",)


def theirs(data: bytes) -> Outcome:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    req: h11.Request | None = None
    body = b""
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage) and req is not None:
                target = req.target
                if target.startswith(b"http://"):
                    target = b"/" + target.split(b"/", 3)[3]
                if b"#" in target:
                    target = target.split(b"#", 1)[0]
                if target.endswith(b"?"):
                    target = target[:-1]
                headers = [(bytes(k), bytes(v)) for k, v in req.headers]
                version = req.http_version.decode()
                if version not in ("1.0", "1.1"):  # h11 handles 1.2 to 1.9 as 1.1, as we do
                    version = "1.1"
                return ("accept", req.method, target, version, headers, body)
            else:
                return ("incomplete",)
    except h11.RemoteProtocolError as exc:
        return ("reject", exc.error_status_hint)


def norm(headers: object) -> list[tuple[bytes, bytes]]:
    """h11 lower-cases the value of Transfer-Encoding (a case-insensitive token); so do we."""
    assert isinstance(headers, list)
    return [(k, v.lower() if k == b"transfer-encoding" else v) for k, v in headers]


@SETTINGS
@given(requests())
def test_both_accept_or_both_reject(gen: Gen) -> None:
    a, b = ours(gen.wire), theirs(gen.wire)
    assert a[0] != "incomplete" or b[0] != "accept", (gen, a, b)
    if a[0] == "accept" and b[0] == "accept":
        assert a[1:4] == b[1:4], (gen, a, b)  # method, target, version
        expected = norm(b[4])
        if "absolute" in gen.quirks:  # the target's host replaces Host (RFC 9112 3.2.2)
            host = (b"host", b"example.test:8080")
            expected = [host if k == b"host" else (k, v) for k, v in expected]
            if host not in expected:  # (HTTP/1.0 without Host: added)
                expected.append(host)
        assert norm(a[4]) == expected, (gen, a[4], b[4])  # names lower-case, OWS stripped
        assert a[5] == b[5], (gen, a[5], b[5])  # body
    elif a[0] == "reject" and b[0] == "accept":
        assert gen.quirks & WE_REJECT.keys(), f"we reject, h11 accepts: {gen} -> {a}"
    elif a[0] == "accept" and b[0] != "accept":
        assert gen.quirks & WE_ACCEPT.keys(), f"we accept, h11 rejects: {gen} -> {b}"


@SETTINGS
@given(requests())
def test_never_smuggles(gen: Gen) -> None:
    """Whatever h11 thinks, we never accept a request whose framing is ambiguous."""
    a = ours(gen.wire)
    ambiguous = {"cl_te", "dup_cl_diff", "cl_list", "te_gzip", "te_http10", "obs_fold"}
    if gen.quirks & ambiguous:
        assert a[0] == "reject", (gen, a)


def test_allow_list_reasons_are_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "hardening.md").read_text()
    for quirk in [*WE_REJECT, *WE_ACCEPT]:
        assert f"`{quirk}`" in doc, f"docs/hardening.md does not explain {quirk}"
