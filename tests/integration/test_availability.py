"""Availability (issue 15): online backup, restart without refusing a
connection (SIGUSR2 re-exec), hot-spare takeover (--standby), against real
daemons on 127.0.0.1.

Each test starts with the property it checks.  Processes a test starts are
stopped by PID at its end; a re-executed daemon is a grandchild of pytest,
so the module makes pytest a child subreaper (prctl) to be able to reap it.
"""
import ctypes
import json
import os
import shutil
import signal
import smtplib
import socket
import threading
import time

import pytest

import mxtest
from mxtest import scaled, wait_until

PR_SET_CHILD_SUBREAPER = 36


def setup_module(module):
    # A daemon re-executed by SIGUSR2 outlives its parent; as a subreaper
    # pytest becomes its parent and can wait for it at the end.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def send(port, to, n=1, tag="m", timeout=20):
    """N messages on one session; their queue ids, in order."""
    qids = []
    s = smtplib.SMTP("127.0.0.1", port, timeout=scaled(timeout))
    try:
        s.ehlo("client.test")
        for i in range(n):
            s.mail("sender@client.test")
            assert s.rcpt(to)[0] == 250
            code, reply = s.data(("Subject: %s %d\r\nX-Test: yes\r\n\r\n%s\r\n"
                                  % (tag, i, "x" * 200)).encode())
            assert code == 250, reply
            qids.append(reply.decode().rsplit(" ", 1)[1])
    finally:
        s.quit()
    return qids


def queued_ids(d):
    r = d.ctl("queue", "--limit", "10000", "--json", check=True, timeout=scaled(30))
    got = json.loads(r.stdout)
    assert not got.get("truncated"), "more than one page queued"
    return {m["queue_id"] for m in got["messages"]}


def pid_alive(pid):
    """True while PID exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pid(pid, timeout=None):
    """SIGTERM PID (not our Popen child) and wait, bounded; SIGKILL if stuck."""
    if not pid_alive(pid):
        reap(pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + (timeout or mxtest.STOP_TIMEOUT)
    while pid_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    reap(pid)


# ---------------------------------------------------------------- backup


class Sender(threading.Thread):
    """Sends one message at a time to PORT until stopped, recording each
    queue id with the monotonic time its 250 arrived."""

    def __init__(self, port, to):
        super().__init__(daemon=True)
        self.port, self.to = port, to
        self.acked = []            # (time of the 250, queue id)
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        try:
            s = smtplib.SMTP("127.0.0.1", self.port, timeout=scaled(20))
            s.ehlo("client.test")
            i = 0
            while not self.halt.is_set():
                s.mail("load@client.test")
                s.rcpt(self.to)
                code, reply = s.data(("Subject: load %d\r\n\r\n%s"
                                      % (i, ("y" * 70 + "\r\n") * 30)).encode())
                if code == 250:
                    self.acked.append((time.monotonic(), reply.decode().rsplit(" ", 1)[1]))
                i += 1
                time.sleep(0.002)
            s.quit()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))


def test_backup_under_load_restores_every_acknowledged_message(
        daemon_factory, primary_factory, tmp_path):
    """A backup taken while mail arrives holds every message acknowledged
    before it began, and none delivered or deleted before it began; a daemon
    started on the copy serves them."""
    p = primary_factory()
    tenants = {
        "keep": {"domains": ["keep.test"], "primary": "127.0.0.1:%d" % mxtest.free_port()},
        "gone": {"domains": ["gone.test"], "primary": p.hostport,
                 "probe_interval": "1s", "probe_up_after": 1, "drain_ramp": "0s",
                 "drain_rate": 100, "drain_initial_rate": 100},
    }
    d = daemon_factory(tenants=tenants)
    kept = send(d.smtp_port, "u@keep.test", 60, tag="before")
    delivered = send(d.smtp_port, "u@gone.test", 20, tag="deliver")
    deleted = kept[:5]
    for q in deleted:
        assert d.ctl("delete", q).returncode == 0
    wait_until(lambda: len(p.messages) >= 20, scaled(30), what="20 deliveries")
    wait_until(lambda: d.tenant_status("gone")["queued_messages"] == 0, scaled(10),
               what="the delivered tenant empty")

    load = Sender(d.smtp_port, "load@keep.test")
    load.start()
    wait_until(lambda: len(load.acked) >= 20 or load.errors, scaled(20), what="load running")
    assert not load.errors, load.errors
    began = time.monotonic()
    bdir = os.path.join(str(tmp_path), "bk")
    r = d.ctl("backup", bdir, "--json", timeout=scaled(60))
    ended = time.monotonic()
    wait_until(lambda: len(load.acked) > 0 and load.acked[-1][0] > ended + 0.2,
               scaled(10), what="load after the backup")
    load.halt.set()
    load.join(scaled(20))
    assert not load.errors, load.errors
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["dir"] == bdir
    assert summary["segments"] >= 1 and summary["bytes"] > 0
    assert summary["messages"] >= 55
    assert "backup:" in r.stderr and "segments" in r.stderr   # progress lines
    assert os.path.isdir(os.path.join(bdir, "journal"))
    assert not os.path.exists(os.path.join(bdir, "journal.partial"))
    with open(os.path.join(bdir, "BACKUP")) as f:
        info = dict(l.strip().split("=", 1) for l in f if "=" in l and not l.startswith("#"))
    assert int(info["messages"]) == summary["messages"]
    d.wait_log("backup", result="ok", timeout=scaled(5))

    # A second backup into the same folder is refused: it holds a spool.
    r2 = d.ctl("backup", bdir)
    assert r2.returncode != 0 and "exists" in r2.stderr

    before = [q for t, q in load.acked if t < began]
    assert len(before) >= 20
    c = mxtest.Daemon(os.path.join(str(tmp_path), "copy"), server={"spool_dir": bdir},
                      tenants={"keep": tenants["keep"],
                               "gone": {"domains": ["gone.test"],
                                        "primary": "127.0.0.1:%d" % mxtest.free_port()}})
    try:
        c.start()
        ids = queued_ids(c)
        missing = [q for q in kept[5:] + before if q not in ids]
        assert not missing, "acknowledged before the backup, missing from it: %s" % missing[:5]
        back = [q for q in delivered + deleted if q in ids]
        assert not back, "delivered or deleted before the backup, back in it: %s" % back[:5]
        shown = c.ctl("show", before[-1], check=True).stdout
        assert "load@client.test" in shown
    finally:
        problems = c.cleanup()
    assert not problems, problems
    # The live spool is untouched by the copy's daemon.
    assert set(kept[5:]) <= queued_ids(d)


def test_backup_text_summary_and_errors(daemon_factory, tmp_path):
    """backup answers a readable summary, refuses a relative folder at the
    daemon and a folder it cannot create, and says why."""
    d = daemon_factory()
    send(d.smtp_port, "u@example.test", 3)
    bdir = os.path.join(str(tmp_path), "text")
    r = d.ctl("backup", bdir)
    assert r.returncode == 0, r.stderr
    assert "complete" in r.stdout and "messages  3" in r.stdout
    assert "MiB/s" in r.stdout
    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w") as f:
        f.write("not a folder\n")
    r = d.ctl("backup", os.path.join(blocker, "sub"))
    assert r.returncode == 74, (r.returncode, r.stderr)
    assert "failed" in r.stderr
    # The daemon keeps serving after a failed backup.
    send(d.smtp_port, "u@example.test", 1)
