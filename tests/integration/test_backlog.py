"""A large backlog drains to a real MTA's sink at the configured rate, with
nothing lost: the "done when" of the drain issue.

The primary is Postfix's smtp-sink (installed with postfix by
contrib/dev.sh), dumping every transaction to a file, so the count and the
content of what arrived can be checked message by message.
"""
import glob
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time

import pytest

import mxtest

SMTP_SINK = "/usr/sbin/smtp-sink"
SANITIZED = os.environ.get("MXSPOOL_SANITIZED") == "1"


def spool_messages(port, n, threads=16):
    """Send N messages with distinct Message-IDs from THREADS clients."""
    errors = []

    def worker(k):
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=60)
            s.ehlo("sender.test")
            for i in range(k, n, threads):
                body = ("From: a@sender.test\r\nTo: u@example.test\r\n"
                        "Message-ID: <backlog-%06d@sender.test>\r\n"
                        "Subject: backlog %d\r\n\r\nbody of message %d\r\n" % (i, i, i))
                s.sendmail("a@sender.test", ["u%d@example.test" % (i % 50)], body)
                if i % (threads * 200) == k:
                    s.quit()
                    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
                    s.ehlo("sender.test")
            s.quit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    assert not errors, errors[:3]


class Sink:
    def __init__(self, port, dumpdir):
        self.port = port
        self.dumpdir = dumpdir
        self.proc = None

    def start(self):
        os.makedirs(self.dumpdir, exist_ok=True)
        os.chmod(self.dumpdir, 0o777)
        args = [SMTP_SINK, "-d", os.path.join(self.dumpdir, "%H%M%S.")]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["127.0.0.1:%d" % self.port, "256"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        mxtest.wait_until(lambda: self._listening(), 10, what="smtp-sink listening")

    def _listening(self):
        try:
            s = smtplib.SMTP("127.0.0.1", self.port, timeout=2)
            s.quit()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def files(self):
        return glob.glob(os.path.join(self.dumpdir, "*"))


@pytest.mark.skipif(not os.path.exists(SMTP_SINK), reason="postfix's smtp-sink not installed")
def test_backlog_drains_to_smtp_sink_at_rate_with_nothing_lost(daemon_factory):
    """Every message of a large backlog reaches the sink exactly once, no
    faster than drain_rate, and the queue ends empty."""
    n = 2000 if SANITIZED else 10000
    rate = 200 if SANITIZED else 500
    sink_port = mxtest.free_port()
    d = daemon_factory(tenants={"big": {
        "domains": ["example.test"],
        "primary": "127.0.0.1:%d" % sink_port,
        "drain_rate": str(rate),
        "drain_initial_rate": str(rate),
        "drain_ramp": "1s",
        "drain_concurrency": "4",
        "messages_per_connection": "200",
        "probe_interval": "1s",
        "probe_up_after": "1",
    }})
    t0 = time.monotonic()
    spool_messages(d.smtp_port, n)
    intake_s = time.monotonic() - t0
    st = d.tenant_status("big")
    assert st["queued_messages"] == n

    # smtp-sink writes as nobody, who cannot enter pytest's 0700 tmp_path.
    dumpdir = tempfile.mkdtemp(prefix="mxspool-sink-")
    sink = Sink(sink_port, dumpdir)
    try:
        sink.start()
        t1 = time.monotonic()
        d.ctl("flush", "big", check=True)
        mxtest.wait_until(lambda: d.tenant_status("big")["queued_messages"] == 0,
                          timeout=mxtest.scaled(4 * n / rate + 60), interval=0.5,
                          what="backlog drained")
        drain_s = time.monotonic() - t1
        mxtest.wait_until(lambda: len(sink.files()) >= n, timeout=30, what="sink files")
        files = sink.files()
        contents = []
        for f in files:
            with open(f, "rb") as fh:
                contents.append(fh.read())
    finally:
        sink.stop()
        shutil.rmtree(dumpdir, ignore_errors=True)

    ids = set()
    for data in contents:
        start = data.find(b"Message-ID: <backlog-")
        assert start >= 0, data[:200]
        ids.add(data[start + 21:start + 27])
        # Our trace header is on every message, above the sender's headers.
        assert 0 <= data.find(b"Received: from ") < start, data[:200]
    assert len(files) == n, "sink got %d transactions for %d messages" % (len(files), n)
    assert len(ids) == n, "%d distinct messages of %d" % (len(ids), n)
    # The token bucket allows one second's worth on top: never faster.
    assert drain_s >= (n - rate) / rate * 0.95, "drained %d in %.1fs: above %d/s" % (n, drain_s, rate)
    st = d.status()
    assert st["delivered_total"] == n
    print("intake %d msgs in %.1fs (%.0f/s); drain in %.1fs (%.0f/s, limit %d/s)"
          % (n, intake_s, n / intake_s, drain_s, n / drain_s, rate))
