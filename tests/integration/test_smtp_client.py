"""The outbound SMTP client (relay/smtp_client.c) through tests/smtp_send,
against the controllable aiosmtpd Primary and small hostile servers."""

import socket
import subprocess
import threading

import pytest

import mxtest
from mxtest import scaled

BODY = (b"Subject: t\r\nFrom: a@client.test\r\n\r\n.dot first\r\nbare lf\n"
        b"..two\r\n.\r\nno final newline")
# What the primary must record: CRLF everywhere, the dots as sent.
EXPECTED = (b"Subject: t\r\nFrom: a@client.test\r\n\r\n.dot first\r\nbare lf\r\n"
            b"..two\r\n.\r\nno final newline\r\n")


def smtp_send(port, *args, to="user@example.test", body=BODY, tmp_path=None,
              host="127.0.0.1", timeout=20):
    path = tmp_path / "msg.eml"
    path.write_bytes(body)
    cmd = [mxtest.binary("tests/smtp_send"), host, str(port), "sender@client.test",
           to, str(path)] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(timeout))


def test_pipelined_delivery_with_dsn_params_and_dot_stuffing(primary, tmp_path):
    """MAIL and every RCPT go in one pipelined write, DSN parameters are
    passed, the body arrives dot-transparent with CRLF line ends, and two
    messages share one connection."""
    r = smtp_send(primary.port, "--count", "2", "--notify", "SUCCESS,FAILURE",
                  "--envid", "QQ123", "--ret", "hdrs", "--orcpt", "rfc822;user@example.test",
                  to="a@example.test,b@example.test", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = primary.wait_for(2)
    for m in got:
        assert m.data == EXPECTED
        assert m.rcpt_tos == ["a@example.test", "b@example.test"]
        assert m.dsn_mail == {"RET": "HDRS", "ENVID": "QQ123"}
        assert m.dsn_rcpt[0]["NOTIFY"] == "SUCCESS,FAILURE"
        assert m.dsn_rcpt[0]["ORCPT"] == "rfc822;user@example.test"
        assert any(o.startswith("SIZE=") for o in m.mail_options)
    assert primary.total_connections == 1
    assert primary.connections[0].verbs() == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA",
                                              "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert "message 1" in r.stdout and r.stdout.count(" 1\n") >= 1


def test_per_recipient_outcomes(primary, tmp_path):
    """A 5xx and a 4xx at RCPT are reported per recipient; the others are
    delivered."""
    primary.reply_for("bad@example.test", 550, "5.1.1 no such user")
    primary.reply_for("busy@example.test", 450, "4.2.0 busy")
    r = smtp_send(primary.port, to="ok@example.test,bad@example.test,busy@example.test",
                  tmp_path=tmp_path)
    assert r.returncode == 2, r.stdout
    assert "rcpt ok@example.test delivered 250" in r.stdout
    assert "rcpt bad@example.test permfail 550 5.1.1" in r.stdout
    assert "rcpt busy@example.test tempfail 450 4.2.0" in r.stdout
    assert primary.wait_for(1)[0].rcpt_tos == ["ok@example.test"]


def test_no_pipelining_one_command_at_a_time(primary, tmp_path):
    """Without PIPELINING every command waits for its reply."""
    primary.disable("PIPELINING")
    r = smtp_send(primary.port, to="a@example.test,b@example.test", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout
    assert r.stdout.split("\n")[2].endswith(" 0")   # "message 1 LAT 0"


def test_smtputf8_message_to_server_without_it_fails_5_6_7(primary, tmp_path):
    """A message needing SMTPUTF8 to a server that lacks it fails every
    recipient permanently with 5.6.7 and sends nothing."""
    primary.disable("SMTPUTF8")
    r = smtp_send(primary.port, "--smtputf8", tmp_path=tmp_path)
    assert r.returncode == 2, r.stdout
    assert "permfail 0 5.6.7" in r.stdout
    assert primary.messages == []


def test_dead_port_and_421_and_bad_banner(primary, tmp_path):
    """Refused connections, a 421 greeting and a 554 greeting end the
    session with distinct statuses."""
    dead = mxtest.free_port()
    r = smtp_send(dead, tmp_path=tmp_path)
    assert r.returncode == 3 and "end -3001" in r.stdout, r.stdout
    primary.reply_at("CONNECT", 421, times=1)
    r = smtp_send(primary.port, tmp_path=tmp_path)
    assert r.returncode == 3 and "end -3004 421" in r.stdout, r.stdout
    primary.reply_at("CONNECT", 554, "5.7.1 go away", times=1)
    r = smtp_send(primary.port, tmp_path=tmp_path)
    assert r.returncode == 3 and "end -3005 554" in r.stdout, r.stdout


def test_421_at_data_is_a_temporary_failure(primary, tmp_path):
    """A 421 after the message leaves every recipient temporarily failed."""
    primary.reply_at("DATA", 421, times=1)
    r = smtp_send(primary.port, tmp_path=tmp_path)
    assert r.returncode == 1, r.stdout
    assert "tempfail 421" in r.stdout and "end -3004" in r.stdout


def test_probe(primary, tmp_path):
    """A probe connects, reads 220, says EHLO and QUIT, and nothing else."""
    r = smtp_send(primary.port, "--probe", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout
    primary.wait_connections(1)
    mxtest.wait_until(lambda: primary.connections[0].closed, scaled(5), what="close")
    assert primary.connections[0].verbs() == ["EHLO", "QUIT"]


def test_starttls_modes(primary_factory, tls_cert, tmp_path):
    """opportunistic encrypts when offered; required fails without
    STARTTLS; verify checks the certificate against --ca."""
    p = primary_factory(tls_cert=tls_cert)
    r = smtp_send(p.port, "--starttls", "opportunistic", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.wait_for(1)[0].tls
    assert "tls=1" in r.stdout
    r = smtp_send(p.port, "--starttls", "verify", "--ca", tls_cert.cert, "--sni",
                  "localhost", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = smtp_send(p.port, "--starttls", "verify", "--sni", "localhost",
                  "--ca", "/etc/ssl/certs/ca-certificates.crt", tmp_path=tmp_path)
    assert r.returncode == 3 and "end -3007" in r.stdout, r.stdout
    p.disable("STARTTLS")
    r = smtp_send(p.port, "--starttls", "required", tmp_path=tmp_path)
    assert r.returncode == 3 and "end -3008" in r.stdout, r.stdout
    r = smtp_send(p.port, "--starttls", "opportunistic", tmp_path=tmp_path)
    assert r.returncode == 0 and "tls=0" in r.stdout, r.stdout


class Scripted:
    """A one-connection TCP server that sends SCRIPT (bytes, or a callable
    given each received line) and records what it receives."""

    def __init__(self, on_line, banner=b"220 scripted ESMTP\r\n"):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.on_line = on_line
        self.banner = banner
        self.lines = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.sock.settimeout(scaled(20))
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        c.settimeout(scaled(20))
        with c:
            if self.banner:
                c.sendall(self.banner)
            buf = b""
            while True:
                try:
                    d = c.recv(4096)
                except OSError:
                    return
                if not d:
                    return
                buf += d
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    self.lines.append(line)
                    out = self.on_line(line)
                    if out is None:
                        return
                    c.sendall(out)

    def close(self):
        self.sock.close()
        self.t.join(timeout=5)


def test_helo_fallback_when_ehlo_refused(tmp_path):
    """A server that refuses EHLO with 5xx is greeted with HELO and gets the
    message without ESMTP parameters."""
    def on(line):
        verb = line[:4].upper()
        if verb == b"EHLO":
            return b"502 5.5.1 no ESMTP here\r\n"
        if verb == b"DATA":
            return b"354 go\r\n"
        if line == b".":
            return b"250 ok\r\n"
        if verb == b"QUIT":
            return b"221 bye\r\n"
        if verb in (b"HELO", b"MAIL", b"RCPT"):
            return b"250 ok\r\n"
        return b""
    s = Scripted(on)
    try:
        r = smtp_send(s.port, tmp_path=tmp_path)
    finally:
        s.close()
    assert r.returncode == 0, r.stdout
    assert s.lines[1].startswith(b"HELO ")
    assert s.lines[2] == b"MAIL FROM:<sender@client.test>"


@pytest.mark.parametrize("evil", [
    b"250 ok\n",                               # bare LF
    b"250-" + b"x" * 3000 + b"\r\n",           # endless line
    b"abc\r\n",                                # not a reply
])
def test_hostile_replies_end_the_session(evil, tmp_path):
    """Malformed or over-long server output is a protocol error, never a
    crash or an unbounded buffer."""
    s = Scripted(lambda line: evil)
    try:
        r = smtp_send(s.port, tmp_path=tmp_path)
    finally:
        s.close()
    assert r.returncode == 3, r.stdout
    assert "end -3006" in r.stdout, r.stdout


def test_silent_server_times_out(tmp_path):
    """A server that never answers is given up after the timeout."""
    s = Scripted(lambda line: b"", banner=b"")
    try:
        r = smtp_send(s.port, "--timeout", "500", tmp_path=tmp_path)
    finally:
        s.close()
    assert r.returncode == 3 and "end -3002" in r.stdout, r.stdout
