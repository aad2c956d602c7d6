"""Sessions that end in awkward places leave nothing behind: the connection
count returns to zero, nothing half-written is queued, and the daemon still
stops cleanly (its loop closes with no handle left, exit 0)."""
import socket
import time

import pytest

import mxtest


def _connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    return s, f


def _cmd(s, f, line, expect):
    s.sendall(line + b"\r\n")
    while True:
        reply = f.readline()
        assert reply[:3] == expect, (line, reply)
        if reply[3:4] == b" ":
            return reply


def test_disconnect_while_a_big_message_is_being_spilled(daemon):
    """A client that vanishes in the middle of a multi-megabyte DATA (while
    the journal spills its buffer to disk) is cleaned up: no message, no
    session left, and a clean stop."""
    for _ in range(3):
        s, f = _connect(daemon.smtp_port)
        _cmd(s, f, b"EHLO client.test", b"250")
        _cmd(s, f, b"MAIL FROM:<a@sender.test>", b"250")
        _cmd(s, f, b"RCPT TO:<u@example.test>", b"250")
        _cmd(s, f, b"DATA", b"354")
        line = b"x" * 998 + b"\r\n"
        for _ in range(3000):           # about 3 MB, many spills
            s.sendall(line)
        f.close()                       # the makefile holds the socket open
        s.close()
    mxtest.wait_until(lambda: daemon.status()["connections"] == 0, 20,
                      what="sessions closed")
    st = daemon.status()
    assert st["accepted_total"] == 0
    assert st["tenants"][0]["queued_messages"] == 0
    # A normal message still goes through afterwards.
    s, f = _connect(daemon.smtp_port)
    _cmd(s, f, b"EHLO client.test", b"250")
    _cmd(s, f, b"MAIL FROM:<a@sender.test>", b"250")
    _cmd(s, f, b"RCPT TO:<u@example.test>", b"250")
    _cmd(s, f, b"DATA", b"354")
    s.sendall(b"Subject: after\r\n\r\nhello\r\n.\r\n")
    assert f.readline().startswith(b"250 2.0.0 Ok: queued as ")
    _cmd(s, f, b"QUIT", b"221")
    s.close()
    assert daemon.status()["tenants"][0]["queued_messages"] == 1
    daemon.stop()      # fails the test unless exit 0 within the bound


def test_sigterm_with_idle_and_busy_sessions(daemon):
    """On SIGTERM idle sessions hear 421 at once and a session in the middle
    of DATA is cut after the grace period; the daemon exits 0."""
    idle, idle_f = _connect(daemon.smtp_port)
    _cmd(idle, idle_f, b"EHLO idle.test", b"250")
    busy, busy_f = _connect(daemon.smtp_port)
    _cmd(busy, busy_f, b"EHLO busy.test", b"250")
    _cmd(busy, busy_f, b"MAIL FROM:<a@sender.test>", b"250")
    _cmd(busy, busy_f, b"RCPT TO:<u@example.test>", b"250")
    _cmd(busy, busy_f, b"DATA", b"354")
    busy.sendall(b"Subject: half\r\n\r\nnot finished\r\n")
    t0 = time.monotonic()
    daemon.stop(timeout=mxtest.scaled(30))
    assert idle_f.readline().startswith(b"421 4.3.2 ")
    assert time.monotonic() - t0 < mxtest.scaled(25)
    idle.close()
    busy.close()


def test_socket_activation_uses_inherited_listener(daemon_factory):
    """With LISTEN_PID/LISTEN_FDS (systemd socket activation) the daemon
    serves SMTP on the socket it was handed, not on its `listen` key."""
    import os
    import subprocess

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    d = daemon_factory(start=False)
    # fd 3 in the child is the listening socket; LISTEN_PID must be the
    # daemon's own pid, which the shell's $$ becomes through exec.
    script = 'exec 3<&%d; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"' % lsock.fileno()
    proc = subprocess.Popen(["/bin/bash", "-c", script, mxtest.binary("mxspoold"),
                             "-c", d.config_path], pass_fds=(lsock.fileno(),),
                            stdout=subprocess.DEVNULL, stderr=open(d.log_path, "ab"))
    lsock.close()
    try:
        mxtest.wait_until(lambda: d.ctl("status").returncode == 0, mxtest.scaled(15),
                          what="control socket")
        s, f = _connect(port)
        _cmd(s, f, b"EHLO client.test", b"250")
        _cmd(s, f, b"QUIT", b"221")
        f.close()
        s.close()
        assert "smtp=systemd(1)" in open(d.log_path).read()
        # The configured listen port was not bound.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", d.smtp_port), timeout=2).close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=mxtest.scaled(20)) == 0
