"""DNSBL deferral and per-client rate limits at intake (issue 11, items 2-3).

A real dnslib name server on a loopback port answers the DNSBL queries
(dns_servers points the daemon at it).  Every test client is on
127.0.0.0/8, which dnsbl_allow and client_limit_exempt exempt by default,
so the tests narrow those lists and bind their clients to chosen loopback
addresses (127.0.0.2 listed, 127.0.0.3 not) to see both sides.
"""

import smtplib
import socket
import time

import pytest

from mxtest import free_port, scaled

LISTED = "127.0.0.2"
CLEAN = "127.0.0.3"


def metric(d, name):
    """The value of the unlabelled sample NAME on D's /metrics, or None."""
    for line in d.metrics().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return None


def connect(d, source):
    """An SMTP session to daemon D from SOURCE (a 127/8 address), after EHLO."""
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=scaled(20),
                     source_address=(source, 0))
    s.ehlo("client.test")
    return s


def rcpt_from(d, source, rcpt="user@example.test"):
    """(code, text) of RCPT TO:<RCPT> in a session from SOURCE; the session
    is closed afterwards."""
    s = connect(d, source)
    try:
        code, _ = s.mail("sender@client.test")
        assert code == 250
        code, text = s.rcpt(rcpt)
        return code, text.decode()
    finally:
        s.quit()


@pytest.fixture
def blocklist(dns):
    # bl.test lists 127.0.0.2 with code 127.0.0.4; slow.test never answers
    # for 127.0.0.2 and .3; broken.test fails (SERVFAIL) for them.
    # Anything else is NXDOMAIN.
    return dns({
        "2.0.0.127.bl.test": {"A": ["127.0.0.4"], "TTL": 60},
        "2.0.0.127.slow.test": "DROP",
        "3.0.0.127.slow.test": "DROP",
        "2.0.0.127.broken.test": "SERVFAIL",
        "3.0.0.127.broken.test": "SERVFAIL",
    })


def test_listed_client_deferred_unlisted_accepted(daemon_factory, primary,
                                                  blocklist):
    # Tenant "other" sets dnsbl empty: the [server] zones do not apply to it.
    d = daemon_factory(primary=primary, dns=blocklist,
                       server={"dnsbl": "bl.test", "dnsbl_allow": "::1"},
                       tenants={
                           "demo": {"domains": ["example.test"],
                                    "primary": primary.hostport},
                           "other": {"domains": ["other.test"],
                                     "primary": primary.hostport,
                                     "dnsbl": ""},
                       })
    mark = d.mark()
    code, text = rcpt_from(d, LISTED)
    assert (code, text) == (450, "4.7.1 Service unavailable; client [%s] "
                            "listed by bl.test" % LISTED)
    line = d.wait_log("dnsbl", after=mark, action="defer")[0]
    assert line["zone"] == "bl.test" and line["code"] == "127.0.0.4"
    assert line["client"] == LISTED
    # The same client writing to the tenant without a DNSBL: accepted.
    assert rcpt_from(d, LISTED, "user@other.test")[0] == 250
    # A client the zone does not list: accepted, and its message spooled.
    s = connect(d, CLEAN)
    try:
        s.sendmail("sender@client.test", ["user@example.test"],
                   b"Subject: clean\r\n\r\nhello\r\n")
    finally:
        s.quit()
    d.wait_log("accept", after=mark, client=CLEAN)
    assert metric(d, "mxspool_dnsbl_deferred_total") == 1
    assert metric(d, "mxspool_client_rate_refused_total") == 0
    assert blocklist.count("3.0.0.127.bl.test", "A") >= 1


def test_ipv6_client_looked_up_by_nibbles(daemon_factory, primary, dns):
    # ::1 under bl.test: its 32 nibbles, last first (RFC 5782 2.4).
    name = ".".join("0" * 31 + "1")[::-1] + ".bl.test"
    assert name.startswith("1.0.0.") and name.count(".") == 33
    server = dns({name: {"A": ["127.0.0.2"]}})
    port6 = free_port("::1")
    d = daemon_factory(primary=primary, dns=server,
                       server={"dnsbl": "bl.test", "dnsbl_allow": "127.0.0.1",
                               "listen": "127.0.0.1:%d, [::1]:%d"
                               % (free_port(), port6)})
    s = smtplib.SMTP("::1", port6, timeout=scaled(20))
    try:
        s.ehlo("client.test")
        assert s.mail("sender@client.test")[0] == 250
        code, text = s.rcpt("user@example.test")
    finally:
        s.quit()
    assert (code, text.decode()) == (
        450, "4.7.1 Service unavailable; client [::1] listed by bl.test")
    assert server.count(name, "A") == 1


def test_dnsbl_allow_exempts(daemon_factory, primary, blocklist):
    d = daemon_factory(primary=primary, dns=blocklist,
                       server={"dnsbl": "bl.test",
                               "dnsbl_allow": LISTED + "/32"})
    assert rcpt_from(d, LISTED)[0] == 250
    # Never even asked.
    assert blocklist.count("2.0.0.127.bl.test") == 0
    # The default list (loopback) exempts everything the tests can be.
    d2 = daemon_factory(primary=primary, dns=blocklist,
                        server={"dnsbl": "bl.test"})
    assert rcpt_from(d2, LISTED)[0] == 250
    assert blocklist.count("2.0.0.127.bl.test") == 0


def test_silent_or_failing_dnsbl_never_blocks(daemon_factory, primary,
                                              blocklist):
    # slow.test never answers: the first RCPT waits for dnsbl_timeout
    # (counted from the connect), then proceeds as not listed.
    bound = 1.5
    d = daemon_factory(primary=primary, dns=blocklist,
                       server={"dnsbl": "slow.test, broken.test, bl.test",
                               "dnsbl_allow": "::1",
                               "dnsbl_timeout": "%dms" % (bound * 1000)})
    mark = d.mark()
    t0 = time.monotonic()
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=scaled(20),
                     source_address=(CLEAN, 0))
    try:
        s.ehlo("client.test")
        assert s.mail("sender@client.test")[0] == 250
        code, _ = s.rcpt("user@example.test")
        waited = time.monotonic() - t0
        assert code == 250
        # It did wait for the silent zone, and no longer than the bound
        # (plus scheduling slack on a loaded machine).
        assert waited >= bound * 0.8, waited
        assert waited <= bound + scaled(1.5), waited
        # Later RCPTs of the session do not wait again.
        t1 = time.monotonic()
        assert s.rcpt("user2@example.test")[0] == 250
        assert time.monotonic() - t1 < scaled(0.5)
    finally:
        s.quit()
    d.wait_log("dnsbl", after=mark, zone="slow.test", result="timeout")
    d.wait_log("dnsbl", after=mark, zone="broken.test", result="error")
    # A listing found by another zone defers at once, however slow the
    # rest.
    t0 = time.monotonic()
    code, text = rcpt_from(d, LISTED)
    assert code == 450 and "listed by bl.test" in text
    assert time.monotonic() - t0 < bound, "waited for the silent zone"


def test_pipelined_commands_behind_a_waiting_rcpt(daemon_factory, primary,
                                                 blocklist):
    # The RCPT that waits for the silent zone holds back what was pipelined
    # behind it; all of it runs afterwards, in order, none lost.
    d = daemon_factory(primary=primary, dns=blocklist,
                       server={"dnsbl": "slow.test", "dnsbl_allow": "::1",
                               "dnsbl_timeout": "800ms"})
    with socket.create_connection(("127.0.0.1", d.smtp_port),
                                  timeout=scaled(20),
                                  source_address=(CLEAN, 0)) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        c.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        c.sendall(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\n"
                  b"RCPT TO:<b@example.test>\r\nRSET\r\nNOOP\r\nQUIT\r\n")
        codes = [f.readline()[:3] for _ in range(6)]
    assert codes == [b"250", b"250", b"250", b"250", b"250", b"221"]


def test_dead_dns_server_never_blocks(daemon_factory, primary):
    # No name server at all (dns_servers is a port nobody listens on): the
    # lookups fail at once and the client is not delayed.
    d = daemon_factory(primary=primary,
                       server={"dnsbl": "bl.test", "dnsbl_allow": "::1",
                               "dnsbl_timeout": "10s"})
    t0 = time.monotonic()
    assert rcpt_from(d, LISTED)[0] == 250
    assert time.monotonic() - t0 < scaled(5)


def session_counts(d, source, messages, rcpts):
    """Replies to MESSAGES transactions of RCPTS recipients each, from
    SOURCE in one session: a list of (mail code, [rcpt codes])."""
    out = []
    s = connect(d, source)
    try:
        for m in range(messages):
            code, _ = s.mail("sender@client.test")
            got = []
            if code == 250:
                for r in range(rcpts):
                    got.append(s.rcpt("u%d-%d@example.test" % (m, r))[0])
            out.append((code, got))
            s.rset()
    finally:
        s.quit()
    return out


def test_client_rate_limits(daemon_factory, primary):
    # Loopback is no longer exempt; 127.0.0.6 is the partner's ETRN host
    # and stays exempt like client_limit_exempt.
    d = daemon_factory(primary=primary,
                       server={"client_limit_exempt": "::1",
                               "client_message_rate": 2,
                               "client_recipient_rate": 3},
                       tenants={"demo": {"domains": ["example.test"],
                                         "primary": primary.hostport,
                                         "etrn_from": "127.0.0.6"}})
    mark = d.mark()
    got = session_counts(d, "127.0.0.5", messages=3, rcpts=2)
    # Message 1: two recipients; message 2: the third, then refused;
    # message 3: MAIL refused (2 a minute).
    assert got[0] == (250, [250, 250])
    assert got[1] == (250, [250, 450])
    assert got[2] == (450, [])
    lines = d.wait_log("reject", after=mark, count=2, client="127.0.0.5")
    replies = sorted(l["reply"] for l in lines)
    assert replies == ["450 4.7.1 Error: too many recipients from 127.0.0.5",
                       "450 4.7.1 Error: too much mail from 127.0.0.5"]
    d.wait_log("rate_limit", after=mark, limit="client_recipient_rate")
    assert metric(d, "mxspool_client_rate_refused_total") == 2
    # Another client has its own budget; the ETRN host is not limited.
    assert session_counts(d, "127.0.0.7", 1, 3)[0] == (250, [250, 250, 250])
    assert all(m == (250, [250] * 3)
               for m in session_counts(d, "127.0.0.6", 4, 3))
    # With the default exemption (loopback) nobody here is limited.
    d2 = daemon_factory(primary=primary,
                        server={"client_message_rate": 1,
                                "client_recipient_rate": 1})
    assert all(m == (250, [250, 250])
               for m in session_counts(d2, "127.0.0.5", 3, 2))
