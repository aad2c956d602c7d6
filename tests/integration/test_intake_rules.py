"""Intake rules of issue 10 against the real mxspoold: loop detection
(max_received), <Postmaster>, a bare LF or CR in DATA answered at the end
of the message, message content pipelined before the 354, HELP without
STARTTLS when TLS is not configured, and a TLS client that closes without
close_notify.

Capability matching at intake is unit-tested on the RAM spool
(tests/unit/test_smtp_server.c, test_primary_caps); its end-to-end test
with a real primary lives with the drain's tests.

Every socket has a timeout; MXSPOOL_SANITIZED=1 stretches them.
"""

import json
import re
import socket
import ssl

import pytest

from mxtest import scaled

IO_TIMEOUT = scaled(10)
QID_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")
NUL_REPLY = "554 5.6.0 Error: NUL character in message data (BINARYMIME is not offered)"
HELP_NO_TLS = ("214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA "
               "BDAT RSET NOOP QUIT VRFY HELP ETRN")


class Client:
    """A byte-exact SMTP client: send() raw octets, reply() the lines of
    the next (possibly multi-line) reply, first() its first line."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.rfile = self.sock.makefile("rb")
        assert self.first().startswith("220 ")

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self):
        lines = []
        while not lines or lines[-1][3:4] == "-":
            raw = self.rfile.readline()
            if not raw.endswith(b"\r\n"):
                raise EOFError("connection closed after %r" % raw)
            lines.append(raw[:-2].decode("utf-8", "replace"))
        return lines

    def first(self):
        return self.reply()[0]

    def cmd1(self, line):
        self.send(line + "\r\n")
        return self.first()

    def closed(self):
        """True once the server closed the connection with nothing more
        to say."""
        try:
            extra = self.rfile.read()
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        assert extra == b"", "unexpected bytes after the last reply: %r" % extra
        return True

    def close(self):
        self.rfile.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def session(d):
    c = Client(d.smtp_port)
    c.send("EHLO client.test\r\n")
    lines = c.reply()
    assert lines[-1].startswith("250 "), lines
    return c


def queue(d):
    data = json.loads(d.ctl("queue", "--json", check=True).stdout)
    return {m["queue_id"]: m for m in data["messages"]}


def show(d, qid):
    return json.loads(d.ctl("show", qid, "--json", check=True).stdout)


def qid_of(line):
    m = QID_RE.match(line)
    assert m, "not a queued reply: %r" % line
    return m.group(1)


def transaction(c, rcpt="u@example.test"):
    """MAIL and RCPT, then DATA and its 354 (DATA last in the group)."""
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt)
    assert c.first() == "250 2.1.0 Ok"
    assert c.first() == "250 2.1.5 Ok"
    assert c.first().startswith("354 ")


def hops(n):
    """A header with N Received: fields (each folded over two lines)."""
    return "".join("Received: from h%d.test (h%d [192.0.2.%d])\r\n"
                   "\tby mx%d.test with ESMTP; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   % (i, i, i % 250 + 1, i) for i in range(n))


# ---------------------------------------------------------------- loop detection

def test_sixty_received_refused_fifty_accepted(daemon_factory):
    """With the default max_received = 50, a message with 60 Received:
    fields gets 554 5.4.6 at the end of data and nothing is queued; one with
    exactly 50 (our own prepended Received: does not count, nor do the
    Received: lines in the body) is queued, in the same session."""
    d = daemon_factory()
    with session(d) as c:
        transaction(c)
        c.send(hops(60) + "Subject: loop\r\n\r\nbody\r\n.\r\n")
        line = c.first()
        assert line.startswith("554 5.4.6 Too many hops"), line
        assert queue(d) == {}
        transaction(c)
        c.send(hops(50) + "Subject: ok\r\n\r\n" + "Received: in the body\r\n" * 5 + ".\r\n")
        qid = qid_of(c.first())
        assert c.cmd1("NOOP") == "250 2.0.0 Ok"
    assert list(queue(d)) == [qid]
    d.wait_log("reject", stage="data", reply=re.compile(r"^554 5\.4\.6 "))


def test_received_limit_through_bdat(daemon_factory):
    """BDAT chunks cut in the middle of a field name are counted the same:
    51 fields over three chunks get 554 5.4.6 at BDAT LAST, nothing is
    queued."""
    d = daemon_factory()
    msg = (hops(51) + "Subject: loop\r\n\r\nbody\r\n").encode()
    cuts = [msg.index(b"Received", 1000) + 4, msg.index(b"Received", 3000) + 7]
    parts = [msg[:cuts[0]], msg[cuts[0]:cuts[1]], msg[cuts[1]:]]
    with session(d) as c:
        out = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n"
        for i, p in enumerate(parts):
            out += b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == 2 else b"") + p
        c.send(out)
        assert c.first() == "250 2.1.0 Ok"
        assert c.first() == "250 2.1.5 Ok"
        assert c.first().startswith("250 2.0.0 Ok: ")
        assert c.first().startswith("250 2.0.0 Ok: ")
        line = c.first()
        assert line.startswith("554 5.4.6 "), line
        assert c.cmd1("NOOP") == "250 2.0.0 Ok"
    assert queue(d) == {}


# ---------------------------------------------------------------- <Postmaster>

@pytest.mark.parametrize("configured,want", [
    (None, "postmaster@example.test"),
    ("hostmaster@example.test", "hostmaster@example.test"),
], ids=["default", "configured"])
def test_postmaster_accepted_and_rewritten(daemon_factory, configured, want):
    """RCPT TO:<Postmaster> (no domain, any case: RFC 5321 4.5.1) is
    accepted and queued for the configured postmaster, or postmaster@ the
    first tenant's first domain; the form the client used is kept as the
    recipient's ORCPT."""
    server = {"postmaster": configured} if configured else None
    d = daemon_factory(server=server)
    with session(d) as c:
        transaction(c, rcpt="PostMaster")
        c.send("Subject: to the postmaster\r\n\r\nhello\r\n.\r\n")
        qid = qid_of(c.first())
    [r] = show(d, qid)["recipients"]
    assert r["address"] == want
    assert r["orcpt"] == "rfc822;PostMaster"
    assert show(d, qid)["tenant"] == "demo"


# ---------------------------------------------------------------- bare LF / CR

@pytest.mark.parametrize("body,reply", [
    (b"bare\nLF\r\n", "550 5.5.2 Error: bare <LF> received in message data"),
    (b"bare\rCR\r\n", "550 5.5.2 Error: bare <CR> received in message data"),
    (b"smuggle\n.\nMAIL FROM:<evil@client.test>\r\n",
     "550 5.5.2 Error: bare <LF> received in message data"),
    # Issue 14: NUL is refused too (no BINARYMIME), wherever it stands;
    # what follows "\0." is text, never a command.
    (b"one\x00two\r\n", NUL_REPLY),
    (b"\x00.\r\nMAIL FROM:<evil@client.test>\r\n", NUL_REPLY),
    (b"ok\r\n.\x00\r\n", NUL_REPLY),
], ids=["bare-lf", "bare-cr", "lf-dot-lf", "nul", "nul-dot", "dot-nul"])
def test_bare_newline_in_data_answered_at_end(daemon_factory, body, reply):
    """A bare LF or CR (or a NUL) in DATA is answered at the true end of the message
    (<CR><LF>.<CR><LF>; a "\\n.\\n" does not end it, and what follows it is
    message text, never a command) with 550 5.5.2; nothing is queued and the
    session goes on: the next message is queued."""
    d = daemon_factory()
    with session(d) as c:
        transaction(c)
        c.send(b"Subject: x\r\n\r\n" + body + b".\r\n")
        assert c.first() == reply
        assert queue(d) == {}
        assert c.cmd1("NOOP") == "250 2.0.0 Ok"
        transaction(c)
        c.send("Subject: fine\r\n\r\nok\r\n.\r\n")
        qid = qid_of(c.first())
    assert list(queue(d)) == [qid]
    assert len(d.log_lines("reject", stage="data")) == 1


# ---------------------------------------------------------------- pipelining

def test_content_pipelined_before_354_refused(daemon_factory):
    """Message content sent in the same write as DATA, before the 354
    (RFC 2920 3.1: DATA may end a group, the content may not), gets
    554 5.5.0 and the connection is closed, as Postfix 3.9's
    smtpd_forbid_unauth_pipelining does; nothing is queued.  DATA as the
    last command of a group is still fine."""
    d = daemon_factory()
    with session(d) as c:
        c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n"
               "DATA\r\nSubject: eager\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert c.first() == "250 2.1.0 Ok"
        assert c.first() == "250 2.1.5 Ok"
        assert c.first() == "554 5.5.0 Error: SMTP protocol synchronization"
        assert c.closed()
    assert queue(d) == {}
    d.wait_log("disconnect", reason="improper pipelining after DATA")
    with session(d) as c:
        transaction(c)
        c.send("Subject: patient\r\n\r\nbody\r\n.\r\n")
        qid_of(c.first())


# ---------------------------------------------------------------- HELP, TLS

def test_help_without_tls(daemon_factory):
    """Without [tls], HELP does not name STARTTLS (EHLO does not offer
    it either)."""
    d = daemon_factory()
    with Client(d.smtp_port) as c:
        c.send("EHLO client.test\r\n")
        assert "250-STARTTLS" not in c.reply()
        assert c.cmd1("HELP") == HELP_NO_TLS


def test_tls_close_without_close_notify_is_not_an_error(daemon_factory, tls_cert):
    """A TLS client that drops the TCP connection without a close_notify
    is logged as an ordinary disconnect (level info), no error or warning;
    HELP names STARTTLS only while it is offered."""
    d = daemon_factory(tls={"cert": tls_cert.cert, "key": tls_cert.key})
    c = Client(d.smtp_port)
    c.send("EHLO client.test\r\n")
    c.reply()
    assert c.cmd1("HELP") == HELP_NO_TLS.replace("HELP ETRN", "HELP STARTTLS ETRN")
    assert c.cmd1("STARTTLS").startswith("220 ")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    mark = d.mark()
    tls = ctx.wrap_socket(c.sock, server_hostname="mx.test")
    tls.sendall(b"EHLO client.test\r\nHELP\r\n")
    got = b""
    while HELP_NO_TLS.encode() not in got:
        chunk = tls.recv(65536)
        assert chunk, got
        got += chunk
    # Close the TCP socket under the TLS layer: no close_notify is sent.
    raw = socket.socket(fileno=tls.detach())
    raw.close()
    [line] = d.wait_log("disconnect", after=mark, reason="client closed (no close_notify)")
    assert line["level"] == "info"
    bad = [f for f in d.log_lines(after=mark) if f.get("level") in ("error", "warn")]
    assert not bad, bad
