#!/usr/bin/python3
"""backlog-bench: intake and unthrottled drain of a backlog (not a test).

Starts mxspoold (from $MXSPOOL_BUILDDIR, default ./build) on loopback with
one tenant whose primary is Postfix's smtp-sink, spools N messages from C
smtplib clients while the sink is down, then starts the sink and times the
drain with drain_rate set far above what the machine can do.  Prints
messages/s for intake and drain and the daemon's peak RSS.

usage: tests/bench/backlog-bench.py [N] [CLIENTS] [CONCURRENCY]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "integration"))
import mxtest  # noqa: E402
import test_backlog  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
clients = int(sys.argv[2]) if len(sys.argv) > 2 else 16
conc = int(sys.argv[3]) if len(sys.argv) > 3 else 8
os.environ.setdefault("MXSPOOL_BUILDDIR", os.path.join(here, "..", "..", "build"))

work = tempfile.mkdtemp(prefix="mxspool-bench-")
os.chmod(work, 0o755)
sink_port = mxtest.free_port()
d = mxtest.Daemon(os.path.join(work, "d"), tenants={"bench": {
    "domains": ["example.test"], "primary": "127.0.0.1:%d" % sink_port,
    "drain_rate": "1000000", "drain_initial_rate": "1000000", "drain_ramp": "1s",
    "drain_concurrency": str(conc), "messages_per_connection": "500",
    "probe_interval": "1s", "probe_up_after": "1"}})
sink = test_backlog.Sink(sink_port, os.path.join(work, "sink"))
try:
    d.start()
    t0 = time.monotonic()
    test_backlog.spool_messages(d.smtp_port, n, threads=clients)
    intake = time.monotonic() - t0
    sink.start()
    t1 = time.monotonic()
    d.ctl("flush", "bench", check=True)
    mxtest.wait_until(lambda: d.tenant_status("bench")["queued_messages"] == 0,
                      timeout=600, interval=0.05, what="drained")
    drain = time.monotonic() - t1
    with open("/proc/%d/status" % d.pid) as f:
        hwm = [l for l in f if l.startswith("VmHWM")][0].split()[1]
    print(json.dumps({"messages": n, "clients": clients, "drain_concurrency": conc,
                      "intake_msgs_per_s": round(n / intake), "drain_msgs_per_s": round(n / drain),
                      "peak_rss_kib": int(hwm)}))
finally:
    sink.stop()
    d.stop()
    shutil.rmtree(work, ignore_errors=True)
