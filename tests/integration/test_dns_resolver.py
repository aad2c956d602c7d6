"""relay/dns.c against a real DNS server (dnsserver.DNSServer) on loopback.

Each test runs tests/dns_query (built from relay/dns.c) against a dnslib
server on a free UDP+TCP port and checks its output and exit status:
0 ok, 1 NODATA (implicit MX printed), 2 NXDOMAIN, 3 null MX, 4 temporary,
5 other, 6 we are the best MX.  The binary is found through
MXSPOOL_BUILDDIR (default /work/main/build).
"""

import os
import select
import socket
import subprocess
import time

import pytest

from dnsserver import DNSServer

BUILDDIR = os.environ.get("MXSPOOL_BUILDDIR", "/work/main/build")
SANITIZED = os.environ.get("MXSPOOL_SANITIZED") == "1"
TIMEOUT = 60 if SANITIZED else 30

BIG = ["2001:db8::%x" % i for i in range(1, 41)]

RECORDS = {
    "example.test": {"MX": [(20, "backup.example.net"), (10, "mx1.example.test"),
                            (10, "MX2.Example.Test."), (30, "last.example.net")],
                     "TTL": 300},
    "mx1.example.test": {"A": ["127.0.0.1", "127.0.0.2"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": "127.0.0.3"},
    "v6only.test": {"AAAA": ["2001:db8::25"]},
    "nomail.test": {"MX": [(0, ".")]},
    "plain.test": {"A": ["127.0.0.4"]},
    "broken.test": "SERVFAIL",
    "refused.test": "REFUSED",
    "hole.test": "DROP",
    "big.test": {"AAAA": BIG, "A": ["127.0.0.5"]},
    "alias.test": {"CNAME": "mx1.example.test"},
}


def dns_query_bin():
    path = os.path.join(BUILDDIR, "tests", "dns_query")
    if not os.access(path, os.X_OK):
        pytest.fail("%s is not built (make tests/dns_query; set MXSPOOL_BUILDDIR)"
                    % path)
    return path


def query(server, *args, self_names=()):
    """Run dns_query once; returns (exit status, output lines)."""
    cmd = [dns_query_bin()]
    for name in self_names:
        cmd += ["-s", name]
    cmd += [server.address if isinstance(server, DNSServer) else server]
    cmd += list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p.returncode, p.stdout.splitlines()


@pytest.fixture
def server():
    s = DNSServer(RECORDS)
    yield s
    s.stop()


class Interactive:
    """dns_query -w: one query per line written to stdin, "--" after each."""

    def __init__(self, server, *args):
        self.proc = subprocess.Popen(
            [dns_query_bin(), "-w", server.address] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""

    def block(self, timeout=TIMEOUT):
        """Lines of the next result, up to its "--"."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"--\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "dns_query gave no result in time: %r" % self.buf
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                assert chunk, "dns_query exited early: %r" % self.buf
                self.buf += chunk
        out, self.buf = self.buf.split(b"--\n", 1)
        return out.decode().splitlines()

    def next(self):
        """Let dns_query start its next query."""
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()

    def finish(self):
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read().decode()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert "Sanitizer" not in err and "runtime error" not in err, err
        return rc, err


def test_mx_sorted_by_preference(server):
    # MX records come back sorted by preference, names without the root dot.
    rc, out = query(server, "mx", "example.test")
    assert rc == 0
    assert out[0] in ("10 mx1.example.test", "10 MX2.Example.Test")
    assert sorted(out[:2]) == ["10 MX2.Example.Test", "10 mx1.example.test"]
    assert out[2:] == ["20 backup.example.net", "30 last.example.net"]
    assert server.count("example.test", "MX") == 1


def test_addresses_aaaa_then_a(server):
    # Both A and AAAA are asked; IPv6 addresses come first, then IPv4.
    rc, out = query(server, "addr", "mx1.example.test")
    assert rc == 0
    assert out == ["::1", "127.0.0.1", "127.0.0.2"]
    assert server.count("mx1.example.test", "A") == 1
    assert server.count("mx1.example.test", "AAAA") == 1
    # One family alone is enough; the other being NODATA is not an error.
    assert query(server, "addr", "mx2.example.test") == (0, ["127.0.0.3"])
    assert query(server, "addr", "v6only.test") == (0, ["2001:db8::25"])


def test_nxdomain_nodata_nullmx(server):
    # NXDOMAIN, NODATA (with the implicit MX of RFC 5321 5.1) and the null
    # MX of RFC 7505 are three distinct outcomes.
    assert query(server, "mx", "nope.test") == (2, [])
    assert query(server, "mx", "plain.test") == (1, ["0 plain.test"])
    assert query(server, "mx", "nomail.test") == (3, [])
    assert query(server, "addr", "nope.test") == (2, [])
    assert query(server, "addr", "example.test") == (1, [])


def test_server_failures_are_temporary(server):
    # SERVFAIL and REFUSED are temporary failures, never NXDOMAIN.
    assert query(server, "mx", "broken.test") == (4, [])
    assert query(server, "addr", "refused.test") == (4, [])


def test_unanswered_query_times_out_temporary(server):
    # A server that never answers gives a temporary failure within c-ares'
    # retry budget (1.5 + 3 + 6 s), not a hang.
    t0 = time.monotonic()
    assert query(server, "mx", "hole.test") == (4, [])
    assert time.monotonic() - t0 < 20
    assert server.count("hole.test", "MX") >= 2


def test_truncated_answer_retried_over_tcp(server):
    # An answer too big for 512-byte UDP comes back truncated and c-ares
    # retries it over TCP on the same port, with every address intact.
    rc, out = query(server, "addr", "big.test")
    assert rc == 0
    assert out == BIG + ["127.0.0.5"]
    assert server.count("big.test", "AAAA", proto="tcp") == 1


def test_cname_followed(server):
    # A CNAME to an address holder yields the target's addresses.
    assert query(server, "addr", "alias.test") == (0, ["::1", "127.0.0.1", "127.0.0.2"])


def test_address_literal_needs_no_server(server):
    # An IP literal is answered without any query.
    assert query(server, "addr", "127.0.0.9") == (0, ["127.0.0.9"])
    assert query(server, "addr", "2001:db8::9") == (0, ["2001:db8::9"])
    assert server.count() == 0


def test_primary_selection_end_to_end(server):
    # With our name in the MX list only strictly better hosts remain; as the
    # best MX there is nobody to relay to; unlisted means every host.
    rc, out = query(server, "primaries", "example.test",
                    self_names=["backup.example.net"])
    assert rc == 0
    assert sorted(out) == ["10 MX2.Example.Test", "10 mx1.example.test"]
    rc, out = query(server, "primaries", "example.test",
                    self_names=["mx2.example.test."])
    assert (rc, out) == (6, [])
    rc, out = query(server, "primaries", "example.test",
                    self_names=["elsewhere.example.org"])
    assert rc == 0 and len(out) == 4
    rc, out = query(server, "primaries", "plain.test",
                    self_names=["backup.example.net"])
    assert (rc, out) == (0, ["0 plain.test"])
    assert query(server, "primaries", "nomail.test",
                 self_names=["backup.example.net"]) == (3, [])


def test_cache_answers_after_server_stops(server):
    # Positive and negative answers are served from the TTL cache: with the
    # DNS server stopped, the same queries give the same answers.
    names = ["mx", "example.test", "addr", "mx1.example.test", "mx", "nope.test",
             "mx", "plain.test"]
    q = Interactive(server, *(names + names))
    first = [q.block()]
    for _ in range(3):
        q.next()
        first.append(q.block())
    seen = server.count()
    assert seen == 5        # MX, A, AAAA, MX, MX
    server.stop()
    second = []
    for _ in range(4):
        q.next()
        second.append(q.block())
    rc, err = q.finish()
    assert second == first
    assert first[0][2:] == ["20 backup.example.net", "30 last.example.net"]
    assert first[1] == ["::1", "127.0.0.1", "127.0.0.2"]
    assert first[2] == [] and first[3] == ["0 plain.test"]
    assert rc == 1          # the last query: NODATA, from the cache
    assert "domain does not exist" in err
    assert server.count() == seen


def test_ttl_expiry_and_no_caching_of_failures(server):
    # An answer is asked again once its TTL has passed, and a temporary
    # failure is not cached: the next query reaches the server.
    server.set("short.test", "MX", [(10, "mx1.example.test")])
    server.set("short.test", "TTL", 1)
    q = Interactive(server, "mx", "short.test", "mx", "short.test",
                    "mx", "short.test", "mx", "broken.test", "mx", "broken.test")
    assert q.block() == ["10 mx1.example.test"]
    q.next()
    assert q.block() == ["10 mx1.example.test"]
    assert server.count("short.test", "MX") == 1
    time.sleep(1.3)
    q.next()
    assert q.block() == ["10 mx1.example.test"]
    assert server.count("short.test", "MX") == 2
    q.next()
    assert q.block() == []
    n = server.count("broken.test")
    server.set("broken.test", "MX", [(5, "fixed.example.test")])
    q.next()
    assert q.block() == ["5 fixed.example.test"]
    assert server.count("broken.test") == n + 1
    rc, _ = q.finish()
    assert rc == 0


def test_ipv6_server():
    # The server list takes an IPv6 server as [addr]:port.
    try:
        s = DNSServer(RECORDS, host="::1")
    except OSError as e:
        pytest.skip("no IPv6 loopback here: %s" % e)
    try:
        assert query(s, "mx", "nomail.test") == (3, [])
        assert s.address.startswith("[::1]:")
    finally:
        s.stop()


def test_bad_server_list_is_usage_error():
    # A server list c-ares cannot parse is refused before any query.
    rc, out = query("not-an-address!", "mx", "example.test")
    assert rc == 64 and out == []


def test_dnsserver_helper_counts_and_updates():
    # The reusable DNSServer: port, counts per name/type/proto, runtime
    # record changes, clean stop.
    with DNSServer({}) as s:
        assert isinstance(s.port, int) and s.port > 0
        assert query(s, "mx", "example.test") == (2, [])
        s.records = {"example.test": {"MX": ["10 mx.example.test"]}}
        assert query(s, "mx", "example.test") == (0, ["10 mx.example.test"])
        assert s.count("EXAMPLE.test.", "mx") == 2
        assert s.count(proto="tcp") == 0
        s.reset_counts()
        assert s.count() == 0
    # After stop the port answers nothing.
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.settimeout(0.3)
        c.sendto(b"\x00" * 12, ("127.0.0.1", s.port))
        with pytest.raises(OSError):
            c.recv(512)
    finally:
        c.close()
