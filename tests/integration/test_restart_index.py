"""A daemon on a large spool greets at once and indexes the old journal in
the background (mxspoold(8), STARTUP): the first 220 does not wait for the
scan, the status carries index_state "loading" until an `index state=ready`
line (then the key is gone), and every message is counted.  After kill -9 in the middle of
the load nothing acknowledged is lost, and a message deleted before the
crash does not come back.

The spool is built by tests/bench/spool-bench append (200 000 messages of
100 bytes through the real append path, a few seconds).
"""
import json
import os
import re
import socket
import subprocess
import time

import mxtest

N = 100000 if mxtest.SANITIZED else 200000


def first_220(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(3) == b"220":
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError("no 220 within %.0f s" % timeout)


def send(port, n, tag):
    import smtplib
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        for i in range(n):
            s.sendmail("a@sender.test", ["u@example.test"],
                       "Subject: %s %d\r\n\r\nbody\r\n" % (tag, i))
    finally:
        s.quit()


def queued(d):
    return d.tenant_status("bench")["queued_messages"]


def wait_indexed(d, want, after):
    d.wait_log("index", timeout=60, after=after, state="ready")
    # index_state is in the status only while loading.
    mxtest.wait_until(lambda: "index_state" not in d.status() and
                      queued(d) == want, mxtest.scaled(20),
                      what="%d queued and index ready" % want)


def test_large_spool_greets_before_the_scan_and_survives_kill9(tmp_path):
    sink = mxtest.free_port()      # nobody listens: nothing is delivered
    d = mxtest.Daemon(str(tmp_path / "d"), tenants={"bench": {
        "domains": ["example.test"], "primary": "127.0.0.1:%d" % sink,
        "quota": "10G", "quota_messages": 10000000}})
    try:
        d.start()
        d.stop()
        bench = os.path.join(mxtest.BUILDDIR, "tests", "bench", "spool-bench")
        assert os.access(bench, os.X_OK), "make check builds %s" % bench
        subprocess.run([bench, "append", d.spool_dir,
                        str(N), "100", "32"], check=True, capture_output=True,
                       timeout=mxtest.scaled(120))

        mark = d.mark()
        t0 = time.monotonic()
        d.start(wait=False)
        first_220(d.smtp_port, mxtest.scaled(10))
        greet_s = time.monotonic() - t0
        rec = d.wait_log("recovery", after=mark)
        rec = rec[-1] if isinstance(rec, list) else rec
        # spool_open returned before the scan: the index is still loading.
        assert rec["index_state"] == "loading", rec
        send(d.smtp_port, 3, "during")
        wait_indexed(d, N + 3, mark)
        done_s = time.monotonic() - t0
        ready = d.log_lines("index", after=mark, state="ready")[-1]
        assert int(ready["messages"]) in (N, N + 1, N + 2, N + 3), ready
        print("\n%d messages: first 220 after %.2f s, index ready after %.2f s "
              "(scan %s ms)" % (N, greet_s, done_s, ready["duration_ms"]))

        # Delete one old message, then crash in the middle of the next load.
        page = json.loads(d.ctl("queue", "--limit", "1", "--json", check=True).stdout)
        rows = page["messages"] if isinstance(page, dict) else page
        victim = rows[0]["queue_id"]
        d.ctl("delete", victim, check=True)
        mxtest.wait_until(lambda: queued(d) == N + 2, mxtest.scaled(10),
                          what="the delete")
        d.kill9()
        mark = d.mark()
        d.start(wait=False)
        first_220(d.smtp_port, mxtest.scaled(10))
        send(d.smtp_port, 1, "after-crash")
        d.kill9()                   # most likely while it still loads

        mark = d.mark()
        d.start(wait=False)
        wait_indexed(d, N + 3, mark)
        r = d.ctl("show", victim)
        assert r.returncode != 0, "deleted %s came back: %s" % (victim, r.stdout)
        listed = d.ctl("queue", "--limit", "10", "--json", check=True).stdout
        assert victim not in listed
        assert re.search(r'"queue_id"', listed)
    finally:
        d.cleanup()
