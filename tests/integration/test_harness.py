"""Self-tests of the harness (mxtest.py, conftest.py): no daemon needed.

If these fail, every other integration test is suspect, so they check the
harness's own promises: the primary records what it got, answers what it
was told to, slows down, goes away and comes back, counts connections; the
helpers parse logs and write configs as documented.
"""

import configparser
import os
import re
import smtplib
import socket
import subprocess
import threading
import time

import pytest

import mxtest

MSG = b"From: a@client.test\r\nTo: u@example.test\r\nSubject: t\r\n\r\nhello\r\n"


def smtp(primary, timeout=10):
    return smtplib.SMTP("127.0.0.1", primary.port, local_hostname="client.test",
                        timeout=timeout)


def test_free_port_distinct_and_bindable():
    # free_port never hands out the same port twice and each one can be bound.
    ports = [mxtest.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_primary_records_message(primary):
    # A message sent with smtplib is recorded with envelope, bytes and connection index.
    with smtp(primary) as s:
        refused = s.sendmail("a@client.test", ["u@example.test", "v@example.test"], MSG)
        assert refused == {}
    (m,) = primary.wait_for(1, timeout=5)
    assert m.mail_from == "a@client.test"
    assert m.rcpt_tos == ["u@example.test", "v@example.test"]
    assert m.data == MSG
    assert m.conn_index == 1 and m.seq == 1
    assert m.header("subject") == "t"
    assert not m.tls
    assert primary.connections[0].verbs()[:5] == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA"]


def test_primary_start_probe_not_counted(primary):
    # The aiosmtpd Controller's own start-up connection is not counted as a client.
    time.sleep(0.1)
    assert primary.total_connections == 0
    assert primary.max_concurrent == 0


def test_primary_connection_and_sequence_indices(primary):
    # Messages on one connection share its index and count up; a new connection gets the next index.
    with smtp(primary) as s:
        s.sendmail("a@client.test", ["u@example.test"], MSG)
        s.sendmail("", ["u@example.test"], MSG)
    with smtp(primary) as s:
        s.sendmail("b@client.test", ["u@example.test"], MSG)
    ms = primary.wait_for(3, timeout=5)
    assert [(m.conn_index, m.seq) for m in ms] == [(1, 1), (1, 2), (2, 1)]
    assert ms[1].mail_from == ""          # the null sender
    assert primary.total_connections == 2


@pytest.mark.parametrize("code", [451, 550])
def test_primary_reply_at_rcpt(primary, code):
    # reply_at("RCPT", code) gives smtplib that code for the recipient and records nothing.
    primary.reply_at("RCPT", code)
    with smtp(primary) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as ei:
            s.sendmail("a@client.test", ["u@example.test"], MSG)
    assert ei.value.recipients["u@example.test"][0] == code
    assert primary.messages == []


@pytest.mark.parametrize("code", [451, 554])
def test_primary_reply_at_data(primary, code):
    # reply_at("DATA", code) answers the end of data with that code and records nothing.
    primary.reply_at("DATA", code)
    with smtp(primary) as s:
        with pytest.raises(smtplib.SMTPDataError) as ei:
            s.sendmail("a@client.test", ["u@example.test"], MSG)
    assert ei.value.smtp_code == code
    assert primary.messages == []
    assert len(primary.refused) == 1


def test_primary_reply_at_data_command(primary):
    # reply_at("DATA_CMD", 451) refuses the DATA command itself, before 354.
    primary.reply_at("DATA_CMD", 451)
    with smtp(primary) as s:
        s.ehlo()
        assert s.mail("a@client.test")[0] == 250
        assert s.rcpt("u@example.test")[0] == 250
        assert s.docmd("DATA")[0] == 451


def test_primary_reply_times_then_accepts(primary):
    # With times=1 the scripted reply is given once, then the primary accepts again.
    primary.reply_at("RCPT", 451, times=1)
    with smtp(primary) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@client.test", ["u@example.test"], MSG)
        s.sendmail("a@client.test", ["u@example.test"], MSG)
    assert len(primary.wait_for(1, timeout=5)) == 1


def test_primary_reply_for_one_recipient(primary):
    # reply_for(addr, 550) refuses that recipient only; the others are delivered.
    primary.reply_for("bad@example.test", 550)
    with smtp(primary) as s:
        refused = s.sendmail("a@client.test", ["bad@example.test", "ok@example.test"], MSG)
    assert refused["bad@example.test"][0] == 550
    (m,) = primary.wait_for(1, timeout=5)
    assert m.rcpt_tos == ["ok@example.test"]


def test_primary_421_closes(primary):
    # A 421 at MAIL reaches the client and the primary closes the connection.
    primary.reply_at("MAIL", 421)
    s = smtp(primary)
    try:
        s.ehlo()
        code, _ = s.mail("a@client.test")
        assert code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
    finally:
        s.close()
    mxtest.wait_until(lambda: primary.current == 0, 5, what="connection closed")


def test_primary_421_banner(primary):
    # reply_at("CONNECT", 421) replaces the banner and closes: smtplib cannot connect.
    primary.reply_at("CONNECT", 421)
    with pytest.raises(smtplib.SMTPConnectError) as ei:
        smtp(primary)
    assert ei.value.smtp_code == 421
    primary.accept()
    with smtp(primary) as s:
        assert s.noop()[0] == 250


def test_primary_slow(primary):
    # With delay_ms every reply comes that much later; a multi-line EHLO reply is delayed once.
    with smtp(primary) as s:
        t0 = time.monotonic()
        s.noop()
        fast = time.monotonic() - t0
        primary.slow(300)
        t0 = time.monotonic()
        assert s.noop()[0] == 250
        slow = time.monotonic() - t0
        t0 = time.monotonic()
        s.ehlo()
        ehlo = time.monotonic() - t0
    assert fast < 0.2
    assert slow >= 0.29
    assert 0.29 <= ehlo < 0.9


def test_primary_refuse_and_come_back(primary):
    # refuse() stops listening (connection refused); come_back() listens on the same port again.
    with smtp(primary) as s:
        s.sendmail("a@client.test", ["u@example.test"], MSG)
    port = primary.port
    primary.refuse()
    assert not primary.listening
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    primary.come_back()
    assert primary.port == port
    with smtp(primary) as s:
        s.sendmail("a@client.test", ["u@example.test"], MSG)
    assert len(primary.wait_for(2, timeout=5)) == 2
    assert primary.total_connections == 2


def test_primary_concurrency_counter(primary):
    # current and max_concurrent follow connections that are open at the same time.
    clients = [smtp(primary) for _ in range(3)]
    try:
        mxtest.wait_until(lambda: primary.current == 3, 5, what="3 connections")
        assert primary.max_concurrent == 3
    finally:
        for c in clients:
            c.quit()
    mxtest.wait_until(lambda: primary.current == 0, 5, what="connections closed")
    assert primary.max_concurrent == 3
    with smtp(primary) as s:
        s.noop()
    assert primary.max_concurrent == 3
    assert primary.total_connections == 4


def test_primary_parallel_senders(primary):
    # Messages sent from several threads at once are all recorded, each once.
    def send(i):
        with smtp(primary) as s:
            s.sendmail("a%d@client.test" % i, ["u@example.test"], MSG)
    ts = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    ms = primary.wait_for(8, timeout=5)
    assert sorted(m.mail_from for m in ms) == sorted("a%d@client.test" % i for i in range(8))
    assert len({m.conn_index for m in ms}) == 8


def test_primary_extensions_toggle(primary):
    # Extensions are advertised as configured; SMTPUTF8 is refused once disabled.
    with smtp(primary) as s:
        s.ehlo()
        for ext in ("pipelining", "8bitmime", "smtputf8", "dsn", "size"):
            assert s.has_extn(ext), ext
        assert not s.has_extn("starttls")      # no certificate given
        assert not s.has_extn("chunking")
    primary.disable("SMTPUTF8", "PIPELINING")
    with smtp(primary) as s:
        s.ehlo()
        assert not s.has_extn("smtputf8")
        assert not s.has_extn("pipelining")
        assert s.docmd("MAIL FROM:<a@client.test> SMTPUTF8")[0] == 555


def test_primary_dsn_parameters(primary):
    # DSN parameters (RET, ENVID, NOTIFY, ORCPT) are accepted and recorded verbatim.
    with smtp(primary) as s:
        s.sendmail("a@client.test", ["u@example.test"], MSG,
                   mail_options=["RET=HDRS", "ENVID=Q123"],
                   rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;U@example.test"])
    (m,) = primary.wait_for(1, timeout=5)
    assert m.dsn_mail == {"RET": "HDRS", "ENVID": "Q123"}
    assert m.dsn_rcpt == [{"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;U@example.test"}]


def test_primary_wait_for_is_bounded(primary):
    # wait_for gives up with an AssertionError after its timeout.
    t0 = time.monotonic()
    with pytest.raises(AssertionError):
        primary.wait_for(1, timeout=0.3)
    assert time.monotonic() - t0 < mxtest.scaled(0.3) + 1.0


def test_primary_starttls(primary_factory, tls_cert):
    # A primary given a certificate offers STARTTLS and marks messages that came over TLS.
    import ssl
    p = primary_factory(tls_cert=tls_cert)
    ctx = ssl.create_default_context(cafile=tls_cert.cert)
    with smtplib.SMTP("127.0.0.1", p.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=ctx)
        s.ehlo()
        assert not s.has_extn("starttls")
        s.sendmail("a@client.test", ["u@example.test"], MSG)
    (m,) = p.wait_for(1, timeout=5)
    assert m.tls


def test_tls_cert_names(tls_cert):
    # The test certificate names localhost and 127.0.0.1 so clients can verify it.
    out = subprocess.run(["openssl", "x509", "-in", tls_cert.cert, "-noout", "-text"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert "DNS:localhost" in out and "IP Address:127.0.0.1" in out


def test_swaks_helper(primary, swaks):
    # The swaks helper talks to a port with sensible defaults and returns the transcript.
    r = swaks(primary.port, "--to", "x@example.test")
    assert r.returncode == 0, r.stdout
    assert "250 2.0.0 OK" in r.stdout
    (m,) = primary.wait_for(1, timeout=5)
    assert m.rcpt_tos == ["x@example.test"] and m.mail_from == "sender@client.test"


def test_parse_log_line():
    # Log lines parse into key=value fields with quoted values unescaped.
    line = ('2024-01-01T00:00:00.000Z mxspoold[12]: level=err event=reload result=error '
            'error="/tmp/x.ini:7: unknown key \\"foo\\"\\x09tab" qid=ABC empty=""')
    f = mxtest.parse_log_line(line)
    assert f["level"] == "err" and f["event"] == "reload" and f["result"] == "error"
    assert f["error"] == '/tmp/x.ini:7: unknown key "foo"\ttab'
    assert f["qid"] == "ABC" and f["empty"] == ""
    assert mxtest.match_fields(f, "reload", error=re.compile(r":7:"))
    assert mxtest.match_fields(f, result=lambda v: v.startswith("err"))
    assert not mxtest.match_fields(f, "start")
    assert not mxtest.match_fields(f, missing="x")


def test_daemon_config_rendering(tmp_path, primary):
    # Daemon writes an INI with its ports, spool, socket, DNS and tenants, omitting None keys.
    d = mxtest.Daemon(tmp_path / "d", primary=primary,
                      server={"max_recipients": 5, "user": None},
                      tenants={"a": {"domains": ["a.test", "b.test"], "primary": primary.hostport,
                                     "quota": "1M"},
                               "b": {"domains": "c.test", "primary": "mx"}},
                      raw="; trailing comment")
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cp.read(d.config_path)
    assert cp.sections() == ["server", "tenant:a", "tenant:b"]
    s = cp["server"]
    assert s["listen"] == "127.0.0.1:%d" % d.smtp_port
    assert s["spool_dir"] == d.spool_dir
    assert s["control_socket"] == d.control_socket
    assert s["metrics_listen"] == "127.0.0.1:%d" % d.metrics_port
    assert s["dns_servers"] == "127.0.0.1:%d" % d.dead_port
    assert s["max_recipients"] == "5"
    assert "user" not in s
    assert cp["tenant:a"]["domains"] == "a.test, b.test"
    assert cp["tenant:a"]["primary"] == "127.0.0.1:%d" % primary.port
    assert len({d.smtp_port, d.metrics_port, d.dead_port, primary.port}) == 4
    d.configure(tenants={"z": {"domains": "z.test", "primary": "127.0.0.1:1"}})
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cp.read(d.config_path)
    assert cp.sections() == ["server", "tenant:z"]
    assert d.proc is None and not d.running


def test_daemon_default_tenant(tmp_path):
    # Without a primary the default tenant points at a port nobody listens on.
    d = mxtest.Daemon(tmp_path / "d")
    assert d.tenants == {"demo": {"domains": ["example.test"],
                                  "primary": "127.0.0.1:%d" % d.dead_port}}


def test_short_dir_for_long_paths(tmp_path):
    # Directories too deep for a unix socket path are replaced by short ones under /tmp.
    deep = tmp_path / ("x" * 120)
    d = mxtest.short_dir(deep, "sock")
    try:
        assert len(d) + len("/control.sock") <= mxtest.SUN_PATH_MAX
    finally:
        mxtest.rmtree_quiet(d)


def test_notify_socket(notify_socket):
    # NotifySocket collects sd_notify datagrams, split into KEY=VALUE lines.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        c.sendto(b"READY=1\nSTATUS=up", notify_socket.path)
        c.sendto(b"STOPPING=1", notify_socket.path)
    i = notify_socket.wait_for("READY=1", timeout=2)
    j = notify_socket.wait_for("STOPPING=1", timeout=2, after=i + 1)
    assert notify_socket.assignments() == ["READY=1", "STATUS=up", "STOPPING=1"]
    assert j == 2
    with pytest.raises(AssertionError):
        notify_socket.wait_for("RELOADING=1", timeout=0.2)


def test_dns_fixture(dns, tmp_path):
    # The dns fixture starts a DNS server on loopback that answers, and Daemon points dns_servers at it.
    import dnslib
    s = dns({"example.test": {"MX": [(10, "mx1.example.test")]}})
    assert isinstance(s.port, int) and s.port > 0
    q = dnslib.DNSRecord.question("example.test", "MX")
    a = dnslib.DNSRecord.parse(q.send("127.0.0.1", s.port, timeout=5))
    assert [str(r.rdata.label) for r in a.rr] == ["mx1.example.test."]
    d = mxtest.Daemon(tmp_path / "d", dns=s)
    assert d.server["dns_servers"] == "127.0.0.1:%d" % s.port


# ---- Daemon lifecycle against stand-in programs --------------------------
# A few lines of Python play mxspoold and mxspoolctl so that start, ready,
# reload, stop and the kill path of Daemon are tested before (and
# independently of) the real daemon.

FAKE_DAEMON = r'''#!/usr/bin/python3
import configparser, json, os, signal, socket, sys, time
cfg = sys.argv[sys.argv.index("-c") + 1]
cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
cp.read(cfg)
sock_path = cp["server"]["control_socket"]
mode = os.environ.get("FAKE_MODE", "")
if mode == "exit":
    print("level=err event=fatal error=\"%s:1: nope\"" % cfg, file=sys.stderr, flush=True)
    sys.exit(78)
def log(s):
    print("2024-01-01T00:00:00.000Z mxspoold[%d]: level=info %s" % (os.getpid(), s),
          file=sys.stderr, flush=True)
def hup(*_):
    log("event=reload result=ok file=%s" % cfg)
def term(*_):
    if mode == "ignore-term":
        log("event=stop note=\"ignoring SIGTERM\"")
        return
    log("event=stop result=ok")
    os.unlink(sock_path)
    sys.exit(0)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, term)
if mode == "slow-start":
    time.sleep(0.5)
s = socket.socket(socket.AF_UNIX)
s.bind(sock_path)
s.listen(5)
log("event=ready")
while True:
    c, _ = s.accept()
    line = c.makefile().readline().strip()
    body = json.dumps({"tenants": [{"name": n[7:]} for n in cp.sections() if n.startswith("tenant:")],
                       "line": line})
    c.sendall(("ok\n" + body + "\n").encode())
    c.close()
'''

FAKE_CTL = r'''#!/usr/bin/python3
import socket, sys
a = sys.argv[1:]
assert a[0] == "-s"
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(a[1])
except OSError as e:
    print("mxspoolctl: %s: %s" % (a[1], e), file=sys.stderr)
    sys.exit(69)
s.sendall((" ".join(a[2:]) + "\n").encode())
data = s.makefile().read()
status, _, body = data.partition("\n")
sys.stdout.write(body)
sys.exit(0 if status == "ok" else 1)
'''


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    b = tmp_path / "fakebuild"
    b.mkdir()
    for name, text in (("mxspoold", FAKE_DAEMON), ("mxspoolctl", FAKE_CTL)):
        p = b / name
        p.write_text(text)
        p.chmod(0o755)
    monkeypatch.setattr(mxtest, "BUILDDIR", str(b))
    return b


def test_daemon_lifecycle_with_stand_in(fake_build, daemon_factory):
    # Daemon starts, waits for status, runs ctl, sees reload lines, and stops by SIGTERM with exit 0.
    d = daemon_factory(env={"FAKE_MODE": "slow-start"})
    assert d.running
    st = d.status()
    assert st["tenants"] == [{"name": "demo"}]
    assert st["line"] == "status --json"
    mark = d.mark()
    d.reload()
    (line,) = d.wait_log("reload", after=mark, result="ok", timeout=5)
    assert line["file"] == d.config_path
    assert d.log_lines("ready")
    assert d.stop() == 0
    assert not d.running and d.returncode == 0
    d.start()
    d.kill9()
    assert d.returncode == -9 and d.killed


def test_daemon_early_exit_is_reported(fake_build, daemon_factory):
    # A daemon that exits before it is ready raises DaemonError carrying its log.
    d = daemon_factory(start=False, env={"FAKE_MODE": "exit"})
    with pytest.raises(mxtest.DaemonError) as ei:
        d.start()
    assert "exited with 78" in str(ei.value) and "nope" in str(ei.value)


def test_daemon_stop_kills_and_fails_when_term_ignored(fake_build, daemon_factory, monkeypatch):
    # stop() kills a daemon that ignores SIGTERM past the bound, and reports it as a failure.
    monkeypatch.setattr(mxtest, "STOP_TIMEOUT", 0.5)
    d = daemon_factory(env={"FAKE_MODE": "ignore-term"})
    t0 = time.monotonic()
    with pytest.raises(mxtest.DaemonError) as ei:
        d.stop()
    assert "did not exit" in str(ei.value)
    assert time.monotonic() - t0 < 5
    assert not d.running and d.killed


def test_daemon_wait_log_bounded(fake_build, daemon_factory):
    # wait_log gives up after its timeout with the log in the message.
    d = daemon_factory()
    with pytest.raises(mxtest.DaemonError) as ei:
        d.wait_log("never", timeout=0.3)
    assert "event=ready" in str(ei.value)


def test_daemon_crash_is_reported_at_teardown(fake_build, tmp_path):
    # A daemon that died of a signal the test did not send is a teardown problem.
    import signal as sig
    d = mxtest.Daemon(tmp_path / "d")
    d.start()
    os.kill(d.pid, sig.SIGSEGV)
    d.wait_exit(5)
    problems = d.cleanup()
    assert problems and "died of signal %d" % sig.SIGSEGV in problems[0]
    d2 = mxtest.Daemon(tmp_path / "d2")
    d2.start()
    d2.kill9()
    assert d2.cleanup() == []
