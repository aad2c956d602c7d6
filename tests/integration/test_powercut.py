"""Power-loss simulation (issue 14 item 3).

mxspoold runs on a fresh spool under tests/powercut.so, an LD_PRELOAD
recorder of every file-system call under spool_dir, while several clients
send mail at once.  powercut.py then rebuilds the worst disks a power cut
could have left at many points of that log (only bytes covered by a
completed fsync/fdatasync of their file, only directory entries covered by
an fsync of their directory, and in the "torn" variant the unsynced writes
too with the last one cut short), a fresh mxspoold is started on each, and
every message whose 250 a client had received before the cut must be in its
queue.

Quick version (CI): a few dozen crash states.  Long version (documented in
tests/integration/README.md):

    MXSPOOL_POWERCUT_STATES=all /usr/bin/python3 -m pytest -q test_powercut.py

tries every interesting crash point in both variants and prints the figures.
"""
import json
import os
import random
import smtplib
import threading
import time

import pytest

import mxtest
import powercut
from mxtest import scaled

QUICK_STATES = 24


def shim_path():
    p = os.path.join(os.environ.get("MXSPOOL_BUILDDIR", ""), "tests", "powercut.so")
    if not os.path.exists(p):
        pytest.skip("tests/powercut.so not built (make check builds it)")
    return p


def client(port, tag, n, big_every, out, errors):
    """Send N messages on one connection; record (qid, ns) of each 250."""
    try:
        s = smtplib.SMTP("127.0.0.1", port, timeout=scaled(30))
        s.ehlo("client%s.test" % tag)
        for i in range(n):
            # Every BIG_EVERY-th message is over the 64 KiB spill threshold.
            body = ("x" * 76 + "\r\n") * (3 if (i + 1) % big_every else 1200)
            data = ("Subject: pc %s-%d\r\nMessage-ID: <%s.%d@client.test>\r\n\r\n%s\r\n"
                    % (tag, i, tag, i, body)).encode()
            s.mail("sender@client.test")
            code, _ = s.rcpt("user%d@example.test" % i)
            assert code == 250, code
            code, reply = s.data(data)
            now = time.monotonic_ns()
            assert code == 250, (code, reply)
            out.append((reply.decode().rsplit(" ", 1)[1], now))
        s.quit()
    except Exception as e:  # reported by the main thread
        errors.append("client %s: %r" % (tag, e))


def queued(d):
    r = d.ctl("queue", "--limit", "100000", "--json", check=True, timeout=scaled(30))
    return {m["queue_id"] for m in json.loads(r.stdout)["messages"]}


def choose(points, want, rng):
    """WANT crash points spread over POINTS (all of them for 'all')."""
    if want == "all" or len(points) <= int(want):
        return list(points)
    want = int(want)
    step = len(points) / want
    return sorted({points[min(len(points) - 1, int(i * step + rng.random() * step))]
                   for i in range(want)})


def test_power_cut_states(daemon_factory, tmp_path):
    """Every message acknowledged before a simulated power cut is queued
    when mxspoold starts on what the cut left, at every point tried."""
    shim = shim_path()
    want = os.environ.get("MXSPOOL_POWERCUT_STATES", str(QUICK_STATES))
    rng = random.Random(int(os.environ.get("MXSPOOL_POWERCUT_SEED", "14")))
    base = mxtest.short_dir(tmp_path, "rec")
    spool = os.path.join(base, "spool")
    log, data = os.path.join(base, "fs.log"), os.path.join(base, "fs.data")
    env = {"LD_PRELOAD": shim, "POWERCUT_ROOT": spool, "POWERCUT_LOG": log,
           "POWERCUT_DATA": data, "POWERCUT_SYNC_DELAY_US": "20000",
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
           ":verify_asan_link_order=0"}
    d = daemon_factory(workdir=base, env=env)
    acked, errors, threads = [], [], []
    nclients, per = (3, 8) if mxtest.SANITIZED else (6, 15)
    if want == "all":
        nclients, per = 8, 40
    for c in range(nclients):
        t = threading.Thread(target=client, args=(d.smtp_port, str(c), per, 7,
                                                  acked, errors))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(scaled(120))
        assert not t.is_alive(), "client did not finish"
    assert not errors, errors
    assert len(acked) == nclients * per
    # Then an operator deletes every fourth message: "deleted" must mean
    # gone for good, whatever the cut.
    deletes = []
    for q, _ in acked[::4]:
        t0 = time.monotonic_ns()
        r = d.ctl("delete", q, check=True, timeout=scaled(30))
        assert r.stdout.splitlines()[0] == "deleted", r.stdout
        deletes.append((q, t0, time.monotonic_ns()))
    assert d.stop() == 0

    lg = powercut.Log(log, data, spool)
    assert any(op == "S" for _, _, op, _ in lg.lines), "no fsync was recorded"
    # The simulator can see a loss: without directory fsyncs nothing of the
    # new spool tree survives a cut at the very end.
    blind = powercut.Replayer(lg.without_dir_syncs())
    blind.advance(len(blind.log.lines))
    assert blind.state(mxtest.short_dir(tmp_path, "blind"), "synced") == 0
    points = choose(lg.interesting(), want, rng)
    rep = powercut.Replayer(lg)
    tried, required_total, worst = 0, 0, None
    for n, k in enumerate(points):
        rep.advance(k)
        cut_ns = lg.ns_at(k)
        asked = {q for q, t0, _ in deletes if t0 < cut_ns}
        required = {q for q, ns in acked if ns < cut_ns} - asked
        gone = {q for q, _, t1 in deletes if t1 < cut_ns}
        for variant in (("synced", "torn") if want == "all" else
                        (("synced", "torn")[n % 2],)):
            top = mxtest.short_dir(tmp_path, "s%d%s" % (k, variant[0]))
            rep.state(top, variant, random.Random(k))
            c = daemon_factory(workdir=os.path.join(top, "w"),
                               server={"spool_dir": os.path.join(top, "spool")})
            have = queued(c)
            assert c.stop() == 0
            missing = required - have
            assert not missing, (
                "cut after log line %d of %d (%s): %d acknowledged messages lost, e.g. %s"
                % (k, len(lg.lines), variant, len(missing), sorted(missing)[:3]))
            back = gone & have
            assert not back, (
                "cut after log line %d of %d (%s): %d messages answered 'deleted' are "
                "queued again, e.g. %s" % (k, len(lg.lines), variant, len(back),
                                           sorted(back)[:3]))
            tried += 1
            required_total += len(required)
            worst = k
    print("powercut: %d log lines, %d crash states tried (%s), %d acknowledged "
          "messages checked in all, %d sent" % (len(lg.lines), tried, want,
                                                required_total, len(acked)))
    assert tried >= min(len(points), 10) and worst is not None
