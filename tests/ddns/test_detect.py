"""Detection against local echo services that lie, stall or disagree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.ddns import AGENT, FakeServer, Handler, Received, Reply

from gateway.ddns.detect import Detector, InterfaceSource, make_source, stable_ipv6
from gateway.ddns.http import Http
from gateway.ddns.outcomes import Detected, DetectFailed

TRACE = (
    "fl=123f45\nh=1.1.1.1\nip={ip}\nts=1732240000.123\nvisit_scheme=https\n"
    "uag=colab-gateway/0.1.0\ncolo=FRA\nsliver=none\nhttp=http/1.1\nloc=DE\ntls=TLSv1.3\n"
    "sni=off\nwarp=off\ngateway=off\nrbi=off\nkex=X25519\n"
)

Serve = Callable[[Handler], FakeServer]


def detector(specs: list[str], agree: int = 1, timeout: float = 5.0) -> Detector:
    http = Http(AGENT, timeout)
    return Detector({"ipv4": [make_source(s, http) for s in specs], "ipv6": []}, agree)


LIARS = [
    ("private address", Reply(200, "192.168.1.20\n"), "192.168.1.20, a private address"),
    ("CGNAT address", Reply(200, "100.72.3.4"), "carrier-grade NAT"),
    ("wrong family", Reply(200, "2a02:8070:1::7"), "an IPv6 address, not IPv4"),
    (
        "HTML page",
        Reply(200, "<html><body>Service busy</body></html>", {"Content-Type": "text/html"}),
        "HTML page",
    ),
    ("HTML page labelled text", Reply(200, "<html>81.2.69.160</html>"), "HTML page"),
    ("error status", Reply(503, "81.2.69.160"), "answered HTTP 503"),
    ("two addresses", Reply(200, "81.2.69.160, 8.8.8.8"), "not one address"),
]


@pytest.mark.parametrize(("label", "lie", "why"), LIARS, ids=[liar[0] for liar in LIARS])
def test_a_lying_source_is_skipped_for_the_next(
    serve: Serve, label: str, lie: Reply, why: str
) -> None:
    liar = serve(lambda r: lie)
    honest = serve(lambda r: Reply(200, "81.2.69.160\n"))
    result = detector([liar.url + "/ip", honest.url + "/ip"]).detect("ipv4")
    assert result == Detected("81.2.69.160", (honest.url + "/ip",))
    for server in (liar, honest):
        (request,) = server.received
        assert (request.method, request.path) == ("GET", "/ip")
        assert request.headers["user-agent"] == AGENT


@pytest.mark.parametrize(("label", "lie", "why"), LIARS, ids=[liar[0] for liar in LIARS])
def test_only_liars_means_detection_failed_with_the_reason(
    serve: Serve, label: str, lie: Reply, why: str
) -> None:
    liar = serve(lambda r: lie)
    result = detector([liar.url + "/ip"]).detect("ipv4")
    assert isinstance(result, DetectFailed)
    assert why in result.reason
    assert liar.url in result.reason
    assert len(liar.received) == 1


def test_cloudflare_trace_gives_its_ip_line(serve: Serve) -> None:
    trace = serve(lambda r: Reply(200, TRACE.format(ip="81.2.69.160")))
    result = detector([f"trace:{trace.url}/cdn-cgi/trace"]).detect("ipv4")
    assert result == Detected("81.2.69.160", (f"trace:{trace.url}/cdn-cgi/trace",))
    assert [r.path for r in trace.received] == ["/cdn-cgi/trace"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (TRACE.format(ip="10.0.0.8"), "private address"),
        (TRACE.format(ip="2a02:8070:1::7"), "not IPv4"),
        ("fl=1\nh=x\n", "without exactly one ip= line"),
        ("<html><body>ip=81.2.69.160</body></html>", "HTML page"),
    ],
)
def test_a_trace_that_lies_fails(serve: Serve, body: str, why: str) -> None:
    trace = serve(lambda r: Reply(200, body))
    result = detector([f"trace:{trace.url}/cdn-cgi/trace"]).detect("ipv4")
    assert isinstance(result, DetectFailed)
    assert why in result.reason


def test_a_stalled_source_times_out_and_the_next_answers(serve: Serve) -> None:
    stalled = serve(lambda r: Reply(200, "81.2.69.160", delay=10))
    honest = serve(lambda r: Reply(200, "81.2.69.161"))
    result = detector([stalled.url, honest.url], timeout=0.3).detect("ipv4")
    assert result == Detected("81.2.69.161", (honest.url,))
    assert len(stalled.received) == 1


def test_a_stalled_source_alone_fails_saying_so(serve: Serve) -> None:
    stalled = serve(lambda r: Reply(200, "81.2.69.160", delay=10))
    result = detector([stalled.url], timeout=0.3).detect("ipv4")
    assert isinstance(result, DetectFailed)
    assert "no answer from 127.0.0.1" in result.reason and "within 0.3s" in result.reason


def test_an_unreachable_source_fails_saying_so(serve: Serve) -> None:
    gone = serve(lambda r: Reply(200, "81.2.69.160"))
    url = gone.url
    gone.close()
    result = detector([url]).detect("ipv4")
    assert isinstance(result, DetectFailed)
    assert "connection refused" in result.reason


def test_agree_two_refuses_two_sources_that_disagree(serve: Serve) -> None:
    a = serve(lambda r: Reply(200, "81.2.69.160"))
    b = serve(lambda r: Reply(200, "81.2.69.161"))
    result = detector([a.url, b.url], agree=2).detect("ipv4")
    assert isinstance(result, DetectFailed)
    assert "fewer than 2 sources agree" in result.reason
    assert f"{a.url} said 81.2.69.160" in result.reason
    assert f"{b.url} said 81.2.69.161" in result.reason
    assert len(a.received) == len(b.received) == 1


def test_agree_two_publishes_what_two_sources_report(serve: Serve) -> None:
    a = serve(lambda r: Reply(200, "81.2.69.160"))
    b = serve(lambda r: Reply(200, "81.2.69.161"))
    c = serve(lambda r: Reply(200, "81.2.69.160\n"))
    d = serve(lambda r: Reply(200, "81.2.69.160"))
    result = detector([a.url, b.url, c.url, d.url], agree=2).detect("ipv4")
    assert result == Detected("81.2.69.160", (a.url, c.url))
    assert len(d.received) == 0  # asked no more sources than needed


def test_agree_two_does_not_count_a_lie(serve: Serve) -> None:
    a = serve(lambda r: Reply(200, "81.2.69.160"))
    b = serve(lambda r: Reply(200, "<html>81.2.69.160</html>"))
    result = detector([a.url, b.url], agree=2).detect("ipv4")
    assert isinstance(result, DetectFailed)
    assert "HTML page" in result.reason


# /proc/net/if_inet6: address, ifindex, prefix length, scope, flags, name
IF_INET6 = """\
2a0204b8000000010000000000000042 02 40 00 01 eth0
2a0204b8000000010000000000000043 02 40 00 20 eth0
2a0204b8000000010000000000000044 02 40 00 40 eth0
2a0204b800000001ba27ebfffe123456 02 40 00 00 eth0
2a0204b8000000010000000000000009 02 40 00 80 eth0
fe800000000000000000000000000001 02 40 20 80 eth0
fd000000000000000000000000000001 02 40 00 80 eth0
2a0204b8000000020000000000000001 03 40 00 80 wlan0
00000000000000000000000000000001 01 80 10 80 lo
"""


def test_stable_ipv6_skips_temporary_deprecated_tentative_and_link_local() -> None:
    # Permanent (static) addresses first, each group in address order; the caller then
    # drops the ones that are not public (fd00::1).
    assert stable_ipv6(IF_INET6, "eth0") == [
        "2a02:4b8:0:1::9",
        "fd00::1",
        "2a02:4b8:0:1:ba27:ebff:fe12:3456",
    ]


def test_interface_source_picks_the_stable_global_address(tmp_path: Path) -> None:
    proc = tmp_path / "if_inet6"
    proc.write_text(IF_INET6)
    source = InterfaceSource("eth0", proc)
    assert source.address("ipv6") == "2a02:4b8:0:1::9"
    assert InterfaceSource("wlan0", proc).address("ipv6") == "2a02:4b8:0:2::1"


def test_interface_with_only_temporary_addresses_fails(tmp_path: Path) -> None:
    proc = tmp_path / "if_inet6"
    proc.write_text(IF_INET6.splitlines()[0] + "\n" + IF_INET6.splitlines()[1] + "\n")
    result = Detector({"ipv4": [], "ipv6": [InterfaceSource("eth0", proc)]}).detect("ipv6")
    assert result == DetectFailed("interface:eth0 has no stable IPv6 address")


def test_interface_with_only_a_private_address_fails(tmp_path: Path) -> None:
    proc = tmp_path / "if_inet6"
    proc.write_text("fd000000000000000000000000000001 02 40 00 80 eth0\n")
    result = Detector({"ipv4": [], "ipv6": [InterfaceSource("eth0", proc)]}).detect("ipv6")
    assert isinstance(result, DetectFailed)
    assert "fd00::1, a unique local (private) address" in result.reason


def test_the_real_loopback_interface_is_never_public() -> None:
    # The kernel's own /proc/net/if_inet6 and `ip -j`: lo has ::1 (host scope) and
    # 127.0.0.1, neither of which may ever be published.
    detector = Detector({"ipv4": [InterfaceSource("lo")], "ipv6": [InterfaceSource("lo")]})
    v4 = detector.detect("ipv4")
    assert isinstance(v4, DetectFailed) and "127.0.0.1, a loopback address" in v4.reason
    v6 = detector.detect("ipv6")
    assert isinstance(v6, DetectFailed) and "no stable IPv6 address" in v6.reason


def test_received_request_shape(serve: Serve) -> None:
    seen: list[Received] = []

    def reply(request: Received) -> Reply:
        seen.append(request)
        return Reply(200, "81.2.69.160")

    server = serve(reply)
    detector([server.url + "/plain?format=text"]).detect("ipv4")
    assert seen[0].query == {"format": "text"}
    assert seen[0].body == b""
    assert "authorization" not in seen[0].headers
