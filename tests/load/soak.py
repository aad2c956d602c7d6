#!/usr/bin/python3
"""Soak of accept + drain with a flapping primary (issue 14 item 5).

    MXSPOOL_BUILDDIR=build tests/load/soak.py --minutes 10

runs one mxspoold (built in MXSPOOL_BUILDDIR) with one tenant whose primary
(an aiosmtpd mxtest.Primary on 127.0.0.1) stops listening and comes back
every --flap seconds (30), while --clients threads send --rate messages per
second in all (over connections of up to 20 messages each).  When the time
is up the clients stop, the primary comes back for good, the queue is
flushed and drained, and the counts are compared:

  - every message a client got "250 ... queued as QID" for reached the
    primary under that queue id (nothing acknowledged is lost);
  - the daemon's accepted_total equals the acknowledged count and its
    delivered_total the unique deliveries; the queue ends empty;
  - duplicates (a primary that drops the connection after taking a message
    but before its 250 got through makes the relay send it again, as any
    MTA would) are counted and reported, not failed;
  - RSS of mxspoold: after a warm-up (the first two flap periods) and at
    the end; with --max-rss-growth-kib the run fails when it grew more.

Every traffic goes to 127.0.0.1 only; the run stops by itself after
--minutes plus a bounded drain (--drain-timeout).  One JSON line with the
figures is printed last; the exit status is 0 when every check holds, 1
otherwise, 2 for bad arguments.  Not run by make check: the quick CI
versions of the load tests are tests/integration/test_load_abuse.py.
"""

import argparse
import json
import os
import re
import smtplib
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import mxtest  # noqa: E402
from mxtest import rss_kib  # noqa: E402

QUEUED_RE = re.compile(r"queued as ([0-9A-F]{16})")
RECEIVED_ID_RE = re.compile(rb"with ESMTP id ([0-9A-F]{16})")
MID_RE = re.compile(rb"\r\nMessage-ID: (<[^>]+>)\r\n")


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}           # Message-ID -> qid
        self.refused = 0          # 4xx/5xx answers (should stay 0)
        self.conn_errors = 0      # connections that failed
        self.attempted = 0


class SoakSMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the text of the reply to the message data
    (sendmail() does not return it), for the queue id."""

    last_data_reply = ""

    def data(self, msg):
        code, text = super().data(msg)
        self.last_data_reply = text.decode("ascii", "replace")
        return code, text


def client(k, d, counts, stop, per_second):
    """Send messages at PER_SECOND until STOP, 20 per connection."""
    i = 0
    interval = 1.0 / per_second
    next_t = time.monotonic()
    while not stop.is_set():
        try:
            s = SoakSMTP("127.0.0.1", d.smtp_port, timeout=30)
        except OSError:
            with counts.lock:
                counts.conn_errors += 1
            time.sleep(1)
            continue
        try:
            s.ehlo("soak%d.client.test" % k)
            for _ in range(20):
                if stop.is_set():
                    break
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_t = max(next_t + interval, time.monotonic() - 1.0)
                mid = "<soak-%d-%d@client.test>" % (k, i)
                i += 1
                data = ("From: soak%d@client.test\r\nTo: u@example.test\r\n"
                        "Message-ID: %s\r\nSubject: soak %d\r\n\r\n%s\r\n"
                        % (k, mid, i, "body line\r\n" * (i % 50)))
                with counts.lock:
                    counts.attempted += 1
                try:
                    s.sendmail("soak%d@client.test" % k, ["u@example.test"], data)
                except smtplib.SMTPResponseException as e:
                    with counts.lock:
                        counts.refused += 1
                    print("refused: %d %r" % (e.smtp_code, e.smtp_error), file=sys.stderr)
                    continue
                m = QUEUED_RE.search(s.last_data_reply)
                with counts.lock:
                    counts.acked[mid] = m.group(1) if m else None
            s.quit()
        except (OSError, smtplib.SMTPException) as e:
            with counts.lock:
                counts.conn_errors += 1
            print("client %d: %r" % (k, e), file=sys.stderr)
        finally:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--flap", type=float, default=30.0, help="seconds between primary flips")
    ap.add_argument("--rate", type=float, default=20.0, help="messages per second, all clients")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--max-rss-growth-kib", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="keep the daemon's files here")
    args = ap.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.clients < 1 or args.flap <= 0:
        ap.error("--minutes, --rate and --flap must be > 0, --clients >= 1")

    workdir = args.workdir or tempfile.mkdtemp(prefix="mxspool-soak-")
    p = mxtest.Primary().start()
    d = mxtest.Daemon(os.path.join(workdir, "d"), primary=p, tenants={"demo": {
        "domains": ["example.test"], "primary": p.hostport,
        "probe_interval": "2s", "probe_up_after": 1, "drain_ramp": "10s",
        "drain_initial_rate": 20, "drain_rate": 500, "drain_concurrency": 4}})
    counts = Counts()
    stop = threading.Event()
    flips = 0
    rss = {}
    ok = True
    try:
        d.start()
        threads = [threading.Thread(target=client, daemon=True,
                                    args=(k, d, counts, stop, args.rate / args.clients))
                   for k in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        end = t0 + args.minutes * 60
        next_flip = t0 + args.flap
        warm = t0 + min(2 * args.flap, args.minutes * 30)
        rss["start_kib"] = rss_kib(d.pid)
        samples = []
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_flip:
                if p.listening:
                    p.refuse()
                else:
                    p.come_back()
                flips += 1
                next_flip += args.flap
            if "warm_kib" not in rss and now >= warm:
                rss["warm_kib"] = rss_kib(d.pid)
            samples.append(rss_kib(d.pid))
            if not d.running:
                raise RuntimeError("mxspoold exited during the soak:\n" + d.log_tail())
            time.sleep(min(1.0, max(0.0, min(end, next_flip) - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(timeout=60)
        sending_s = time.monotonic() - t0
        rss["end_of_intake_kib"] = rss_kib(d.pid)
        if not p.listening:
            p.come_back()
        d.ctl("flush", check=True)
        deadline = time.monotonic() + args.drain_timeout
        while d.status()["tenants"][0]["queued_messages"] > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("queue not empty %.0fs after the end" % args.drain_timeout)
            time.sleep(0.5)
        rss["end_kib"] = rss_kib(d.pid)
        rss["max_kib"] = max(samples + [rss["end_kib"]])
        st = d.status()

        with counts.lock:
            acked = dict(counts.acked)
        delivered = {}
        dups = 0
        for m in list(p.messages):
            mid = MID_RE.search(m.data)
            qid = RECEIVED_ID_RE.search(m.data)
            key = mid.group(1).decode() if mid else None
            if key in delivered:
                dups += 1
            delivered[key] = qid.group(1).decode() if qid else None
        lost = [mid for mid in acked if mid not in delivered]
        wrong_qid = [mid for mid, q in acked.items() if mid in delivered and q != delivered[mid]]
        unacked_delivered = len([mid for mid in delivered if mid not in acked])
        report = {
            "minutes": args.minutes, "sending_s": round(sending_s, 1),
            "primary_flips": flips, "attempted": counts.attempted,
            "acknowledged": len(acked), "refused": counts.refused,
            "connection_errors": counts.conn_errors,
            "delivered_unique": len(delivered), "duplicates": dups,
            "delivered_not_acknowledged": unacked_delivered,
            "lost": len(lost), "wrong_qid": len(wrong_qid),
            "accepted_total": st["accepted_total"],
            "delivered_total": st["tenants"][0].get("delivered_total", st.get("delivered_total")),
            "queued_at_end": st["tenants"][0]["queued_messages"],
            "rss_kib": rss,
            "rss_growth_kib": rss["end_kib"] - rss.get("warm_kib", rss["start_kib"]),
        }
        checks = {
            "nothing acknowledged lost": not lost,
            "queue ids match": not wrong_qid,
            "accepted_total == acknowledged": st["accepted_total"] == len(acked),
            "queue empty": report["queued_at_end"] == 0,
            "no refusals": counts.refused == 0,
            "mxspoold alive": d.running,
        }
        if args.max_rss_growth_kib is not None:
            checks["rss growth <= %d KiB" % args.max_rss_growth_kib] = \
                report["rss_growth_kib"] <= args.max_rss_growth_kib
        report["failed_checks"] = [k for k, v in checks.items() if not v]
        ok = not report["failed_checks"]
        if lost:
            print("lost, e.g.: %s" % lost[:5], file=sys.stderr)
        print(json.dumps(report, sort_keys=True))
    finally:
        stop.set()
        problems = d.cleanup()
        p.stop()
        if problems:
            print("teardown: %s" % problems, file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
