#!/usr/bin/python3
"""availability-bench.py BUILDDIR [N]: the figures of issue 15 on a spool of
N messages (default 100000, 2 KiB each, built with spool-bench append):

  - standby takeover: an active mxspoold and a --standby one on the same
    spool; kill -9 the active; seconds until the standby answers SMTP
    (lock wait + recovery + start), and the recovery time it logs;
  - backup: mxspoolctl backup to the same file system (hard links) and to
    /dev/shm (copies), with MB/s;
  - SIGUSR2: seconds from the signal to the new process's ready line, with
    the spool full.

A benchmark, not a test: it prints figures and asserts only that the
daemons came up.  Run: make bench && tests/bench/availability-bench.py .
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
os.environ["MXSPOOL_BUILDDIR"] = build
import mxtest  # noqa: E402

N = int(sys.argv[2]) if len(sys.argv) > 2 else 100000


def smtp_greets(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(64).startswith(b"220")
    except OSError:
        return False


def main():
    work = tempfile.mkdtemp(prefix="mxspool-avail-")
    spool = os.path.join(work, "spool")
    t = time.monotonic()
    subprocess.run([os.path.join(build, "tests", "bench", "spool-bench"), "append",
                    spool, str(N), "2048", "64"], check=True, capture_output=True)
    print("built %d messages in %.1f s" % (N, time.monotonic() - t))
    tenants = {"bench": {"domains": ["bench.test"],
                         "primary": "127.0.0.1:%d" % mxtest.free_port()}}
    a = mxtest.Daemon(os.path.join(work, "a"), server={"spool_dir": spool}, tenants=tenants)
    b = mxtest.Daemon(os.path.join(work, "b"), tenants=tenants, args=["--standby"])
    b.server.update(a.server)
    b.smtp_port, b.control_socket = a.smtp_port, a.control_socket
    b.write_config()
    try:
        a.start(timeout=120)
        for dest in (os.path.join(work, "bk-link"), "/dev/shm/mxspool-avail-bk"):
            shutil.rmtree(dest, ignore_errors=True)
            r = a.ctl("backup", dest, "--json", timeout=600)
            j = json.loads(r.stdout)
            print("backup to %s: %d messages, %d segments (%d linked, %d copied), "
                  "%.1f MB in %.3f s = %.0f MB/s" % (
                      dest, j["messages"], j["segments"], j["linked"], j["copied"],
                      j["bytes"] / 1e6, j["duration_ms"] / 1000.0,
                      j["bytes"] / 1e6 / max(j["duration_ms"] / 1000.0, 0.001)))
            shutil.rmtree(dest, ignore_errors=True)
        mark = a.mark()
        t = time.monotonic()
        a.signal(signal.SIGUSR2)
        while not a.log_lines("ready", after=mark, handed_over="yes"):
            time.sleep(0.005)
        print("SIGUSR2 -> new process ready: %.3f s" % (time.monotonic() - t))
        newpid = int(a.log_lines("ready", after=mark, handed_over="yes")[-1]["pid"])
        a.wait_exit(30)
        b.start(wait=False)
        b.wait_log("standby", timeout=30)
        t = time.monotonic()
        os.kill(newpid, signal.SIGKILL)
        while not smtp_greets(b.smtp_port):
            time.sleep(0.005)
        took = time.monotonic() - t
        rec = b.wait_log("recovery", timeout=30)
        print("standby takeover after kill -9 at %d messages: %.3f s to the first "
              "SMTP greeting (recovery %s ms)" % (N, took, rec[-1]["duration_ms"]
                                                   if isinstance(rec, list) else rec["duration_ms"]))
    finally:
        for d in (b, a):
            d.cleanup()
        shutil.rmtree(work, ignore_errors=True)


main()
