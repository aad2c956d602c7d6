"""Drain feedback (issue 9) against real primaries.

- A private Postfix instance (its own config_directory, queue_directory and
  data_directory under the test's temporary folder, a free high port, its
  master run in the foreground as our child and stopped by PID; the system
  Postfix, if any, is never touched) with
  smtpd_client_connection_count_limit = 2, drained with drain_concurrency 4:
  the refusals cut the connection limit instead of taking the primary
  down, and the drain reaches at least 80 % of drain_rate.
- An aiosmtpd primary that answers 451 above R msg/s (a token bucket): the
  drain settles near R (on average at least 0.8 R) and never sends more
  than drain_rate (+ the bucket depth of 1) in any second.
- RFC 9422 LIMITS RCPTMAX=2: a 5-recipient message takes 3 transactions.
- primary = mx for a tenant of two domains whose MX hosts differ: each
  domain's mail goes to its own MX.

Each test names the property it checks in its docstring and prints the
figures it measured (pytest -s shows them).  Rates are low and bounds
generous (2 loaded cores with ASan); every wait has a deadline.
"""

import datetime
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time

import pytest
from aiosmtpd.controller import Controller

from mxtest import free_port, scaled, wait_until

POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"


def send(d, n, to=("user@example.test",), sender="sender@client.test",
         start=0):
    """N messages through the daemon on one connection."""
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=scaled(30))
    try:
        for i in range(start, start + n):
            s.sendmail(sender, list(to),
                       "Subject: m%04d\r\nMessage-ID: <m%04d@client.test>\r\n"
                       "\r\nbody %d\r\n" % (i, i, i))
    finally:
        s.quit()


def log_time(fields):
    """The monotonic-free wall time of a parsed log line, in seconds."""
    stamp = fields["_line"].split(" ", 1)[0]
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def max_in_window(times, window=1.0):
    """The most events in any WINDOW-second interval of sorted TIMES."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def tenant(primary, **kw):
    t = {"domains": ["example.test"], "primary": primary,
         "probe_interval": "1s", "probe_up_after": 1, "drain_ramp": "0s"}
    t.update(kw)
    t.setdefault("drain_initial_rate", t.get("drain_rate", 50))
    return t


# ---------------------------------------------------------------- Postfix


class PostfixPrimary:
    """A throw-away Postfix: master in the foreground (-d) as our child,
    config and queue under DIR, smtpd on 127.0.0.1:PORT, every message
    accepted for example.test and discarded after queueing."""

    def __init__(self, base, count_limit):
        self.dir = str(base)
        os.makedirs(self.dir, mode=0o755)
        self.port = free_port()
        self.etc = os.path.join(self.dir, "etc")
        self.maillog = os.path.join(self.dir, "maillog")
        for sub in ("etc", "spool", "data"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        main = {
            "compatibility_level": "3.6",
            "config_directory": self.etc,
            "queue_directory": os.path.join(self.dir, "spool"),
            "data_directory": os.path.join(self.dir, "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "primary.test",
            "mydomain": "test",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "example.test",
            "local_recipient_maps": "",
            "local_transport": "discard:",
            "default_transport": "discard:",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            "smtpd_client_connection_count_limit": str(count_limit),
            # The default exempts $mynetworks, which holds 127.0.0.1.
            "smtpd_client_event_limit_exceptions": "",
            "smtpd_client_connection_rate_limit": "0",
        }
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        services = [
            "127.0.0.1:%d inet n - n - - smtpd" % self.port,
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("\n".join(services) + "\n")
        self.proc = None

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        env = dict(os.environ, MAIL_CONFIG=self.etc)
        # Creates the queue's subdirectories with their owners.
        subprocess.run(["postfix", "-c", self.etc, "check"], env=env,
                       check=True, timeout=60)
        self.proc = subprocess.Popen([POSTFIX_MASTER, "-c", self.etc, "-d"],
                                     env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     start_new_session=True)

        def listening():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
                    return s.noop()[0] == 250
            except (OSError, smtplib.SMTPException):
                return False
        wait_until(listening, scaled(20), interval=0.2, what="Postfix smtpd")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # master stops its children on SIGTERM.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


@pytest.fixture
def postfix():
    if os.geteuid() != 0 or not os.access(POSTFIX_MASTER, os.X_OK):
        pytest.skip("a private Postfix needs root and postfix installed")
    made = []
    # Postfix's daemons run as user postfix: their queue must not sit under
    # pytest's 0700 temporary folder, and socket paths must stay short.
    base = tempfile.mkdtemp(prefix="mxpfx-", dir="/tmp")
    os.chmod(base, 0o755)

    def make(count_limit):
        p = PostfixPrimary(os.path.join(base, str(len(made))), count_limit)
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.stop()
    shutil.rmtree(base, ignore_errors=True)


def delivered_times(d):
    return sorted(log_time(f) for f in d.log_lines("deliver"))


def test_postfix_connection_limit_cuts_concurrency(daemon_factory, postfix):
    """Postfix with smtpd_client_connection_count_limit = 2 and the drain at
    drain_concurrency 4: the 421s cut the tenant's connection limit to 2
    (status drain_concurrency_limit / limit_reason), the primary is never
    taken down, and the backlog leaves at >= 80 % of drain_rate."""
    rate, n = 20, 160
    pf = postfix(count_limit=2)
    d = daemon_factory(tenants={"demo": tenant(
        pf.hostport, drain_rate=rate, drain_concurrency=4,
        messages_per_connection=100)})
    wait_until(lambda: d.tenant_status("demo")["primary_state"] == "up",
               scaled(15), what="Postfix up")
    assert d.ctl("hold", "demo").returncode == 0
    send(d, n)
    mark = d.mark()
    assert d.ctl("release", "demo").returncode == 0
    wait_until(lambda: d.tenant_status("demo")["queued_messages"] == 0,
               scaled(40), interval=0.2, what="the backlog delivered")
    times = [log_time(f) for f in d.log_lines("deliver", after=mark)]
    assert len(times) == n
    times.sort()
    # The bucket starts full (drain_burst 0: one second's worth, RATE
    # messages at once): that burst is what opens 4 connections at once;
    # the rate is measured on what follows it.
    achieved = (n - 1 - rate) / (times[-1] - times[rate])
    cuts = d.log_lines("concurrency", after=mark)
    downs = d.log_lines("probe", after=mark, state="down")
    st = d.tenant_status("demo")
    refusals = pf.log().count("concurrency limit exceeded")
    print("\n# Postfix count limit 2, drain_concurrency 4, drain_rate %d: "
          "%.1f msg/s = %.0f %% of drain_rate after the first second's "
          "burst (%.1f s for %d messages); %d refusals, limit now %d (%s)"
          % (rate, achieved, 100 * achieved / rate, times[-1] - times[0], n,
             refusals, st["drain_concurrency_limit"], st["limit_reason"]))
    for c in cuts:
        print("#   %s limit=%s %s" % (c["_line"][11:23], c["limit"], c["reason"]))
    assert not downs, downs
    assert refusals >= 1
    assert any(c["limit"] == "2" for c in cuts), cuts
    assert st["drain_concurrency_limit"] in (2, 3)
    assert st["limit_reason"].startswith(("cut: ", "raised "))
    assert achieved >= 0.8 * rate
    assert st["primary_state"] == "up"


# ---------------------------------------------------------------- aiosmtpd


class ScriptedPrimary:
    """An aiosmtpd primary: 451 at MAIL above RATE msg/s (a token bucket of
    DEPTH), RCPTMAX from LIMITS enforced with 452, every MAIL and every
    accepted message timed."""

    def __init__(self, rate=None, depth=1.0, rcpt_max=None, mail_max=None,
                 name="primary.test", host="127.0.0.1", port=None):
        self.rate, self.depth = rate, depth
        self.rcpt_max, self.mail_max = rcpt_max, mail_max
        self.name = name
        self.tokens, self.last = depth, time.monotonic()
        self.lock = threading.Lock()
        self.mail_times = []        # every MAIL command
        self.ok_times = []          # every message accepted (end of data)
        self.messages = []          # (rcpt_tos, data)
        self.refused = 0
        self.host = host
        self.port = port or free_port()
        self.ctl = Controller(self, hostname=host, port=self.port,
                              server_hostname=name, ready_timeout=10.0)

    @property
    def hostport(self):
        return "%s:%d" % (self.host, self.port)

    def start(self):
        self.ctl.start()
        return self

    def stop(self):
        self.ctl.stop()

    def _take(self):
        if self.rate is None:
            return True
        now = time.monotonic()
        with self.lock:
            self.tokens = min(self.depth,
                              self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        limits = []
        if self.rcpt_max:
            limits.append("RCPTMAX=%d" % self.rcpt_max)
        if self.mail_max:
            limits.append("MAILMAX=%d" % self.mail_max)
        lines = [self.name, "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if limits:
            lines.append("LIMITS " + " ".join(limits))
        return ["250-" + x for x in lines[:-1]] + ["250 " + lines[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            self.mail_times.append(time.monotonic())
        if not self._take():
            with self.lock:
                self.refused += 1
            return "451 4.7.1 rate limit exceeded, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_max and len(envelope.rcpt_tos) >= self.rcpt_max:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.ok_times.append(time.monotonic())
            self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued"


@pytest.fixture
def scripted():
    made = []

    def make(start=True, **kw):
        p = ScriptedPrimary(**kw)
        made.append(p)
        return p.start() if start else p

    yield make
    for p in made:
        p.stop()


def test_rate_limited_primary_gets_near_its_rate(daemon_factory, scripted):
    """A primary that answers 451 above R msg/s: over 15 s the drain's
    accepted rate averages at least 0.8 R (AIMD settles near R, not R/2,
    and a 451'd message is retried at once, not after a minute), and no
    second sees more than drain_rate + 1 (drain_burst = 1) MAIL commands."""
    R, rate, window = 8.0, 20, 15.0
    p = scripted(rate=R, depth=2.0)
    d = daemon_factory(tenants={"demo": tenant(
        p.hostport, drain_rate=rate, drain_burst=1, drain_concurrency=2)})
    wait_until(lambda: d.tenant_status("demo")["primary_state"] == "up",
               scaled(15), what="primary up")
    assert d.ctl("hold", "demo").returncode == 0
    send(d, int(R * window * 1.5))
    assert d.ctl("release", "demo").returncode == 0
    wait_until(lambda: p.ok_times and
               time.monotonic() - p.ok_times[0] >= window,
               scaled(window + 20), interval=0.2, what="%.0f s of drain" % window)
    with p.lock:
        t0 = p.ok_times[0]
        ok = [t for t in p.ok_times if t < t0 + window]
        mails = list(p.mail_times)
        refused = p.refused
    avg = len(ok) / window
    worst = max_in_window(mails)
    deferred_long = [f for f in d.log_lines("defer")
                     if int(f.get("retry_in_s", "0")) > 0]
    print("\n# 451 above R=%.0f msg/s, drain_rate %d: %.2f msg/s = %.2f R over "
          "%.0f s; %d x 451 of %d MAIL; at most %d MAIL in one second; "
          "%d deferrals with a back-off"
          % (R, rate, avg, avg / R, window, refused, len(mails), worst,
             len(deferred_long)))
    assert avg >= 0.8 * R
    assert worst <= rate + 1
    assert d.tenant_status("demo")["primary_state"] == "up"


def test_rcptmax_splits_recipients(daemon_factory, scripted):
    """RFC 9422 LIMITS RCPTMAX=2: a 5-recipient message leaves in three
    transactions (2 + 2 + 1), each recipient delivered once, none refused
    with 452."""
    p = scripted(rcpt_max=2)
    d = daemon_factory(tenants={"demo": tenant(p.hostport, drain_rate=10)})
    rcpts = ["u%d@example.test" % i for i in range(1, 6)]
    send(d, 1, to=rcpts)
    wait_until(lambda: len(p.messages) >= 3, scaled(15), what="3 transactions")
    wait_until(lambda: d.tenant_status("demo")["queued_messages"] == 0,
               scaled(10), what="empty queue")
    time.sleep(0.3)
    got = [m[0] for m in p.messages]
    assert len(got) == 3, got
    assert sorted(len(g) for g in got) == [1, 2, 2]
    assert sorted(a for g in got for a in g) == rcpts
    assert len(p.mail_times) == 3
    st = d.tenant_status("demo")
    assert st["primary_caps"]["rcptmax"] == 2
    assert st["delivered_total"] == 5


def test_each_domain_to_its_own_mx(daemon_factory, scripted, dns):
    """primary = mx for a tenant of domains whose MX hosts differ
    (127.0.0.2 for example.test, 127.0.0.3 for example.org, all preferred
    over us): each message goes to its recipients' domain's MX, a message
    to both is split between them, and each MX has its own probe state: the
    second one down does not stop the first one's mail, and its mail goes
    once it is up.  A third domain whose MX is the first one's server
    (example.net) shares its destination: one transaction for both."""
    port = free_port()
    a = scripted(host="127.0.0.2", port=port, name="mx-a.example.test")
    b = scripted(start=False, host="127.0.0.3", port=port,
                 name="mx-b.example.org")
    server = dns({
        "example.test": {"MX": [(10, "mx-a.example.test"), (20, "mx.test")]},
        "example.org": {"MX": [(10, "mx-b.example.org"), (20, "mx.test")]},
        # example.net lives on example.test's server: one destination.
        "example.net": {"MX": [(5, "mail.example.net"), (20, "mx.test")]},
        "mail.example.net": {"A": ["127.0.0.2"]},
        "mx-a.example.test": {"A": ["127.0.0.2"]},
        "mx-b.example.org": {"A": ["127.0.0.3"]},
        "mx.test": {"A": ["127.0.0.1"]},
    })
    d = daemon_factory(dns=server, server={"mx_port": port}, tenants={
        "demo": tenant("mx", domains=["example.test", "example.org",
                                      "example.net"], drain_rate=20)})
    # Whichever of the two resolved last says it is the other's alias.
    d.wait_log("destination", timeout=scaled(10),
               domain=lambda v: v in ("example.net", "example.test"),
               same_as=lambda v: v in ("example.net", "example.test"))
    send(d, 3, to=["t@example.test"])
    send(d, 3, to=["o@example.org"], start=3)
    send(d, 1, to=["both@example.test", "both@example.org"], start=6)
    send(d, 1, to=["n@example.net", "n@example.test"], start=7)
    wait_until(lambda: len(a.messages) >= 5, scaled(15),
               what="example.test's and example.net's mail at their MX")
    # example.org's MX is down: its mail waits, example.test's went.
    st = d.tenant_status("demo")
    assert st["primary_state"] == "up"
    assert st["queued_messages"] >= 4
    b.start()
    assert d.ctl("flush", "demo").returncode == 0
    wait_until(lambda: len(b.messages) >= 4, scaled(15),
               what="example.org's mail at its MX")
    wait_until(lambda: d.tenant_status("demo")["queued_messages"] == 0,
               scaled(10), what="empty queue")
    ra = sorted(r for rs, _ in a.messages for r in rs)
    rb = sorted(r for rs, _ in b.messages for r in rs)
    print("\n# example.test -> 127.0.0.2: %s; example.org -> 127.0.0.3: %s"
          % (ra, rb))
    assert ra == ["both@example.test", "n@example.net", "n@example.test"] + \
        ["t@example.test"] * 3
    assert rb == ["both@example.org"] + ["o@example.org"] * 3
    # Same server, same destination: one transaction for both domains.
    assert sorted(["n@example.net", "n@example.test"]) in \
        [sorted(rs) for rs, _ in a.messages]
    assert d.tenant_status("demo")["delivered_total"] == 10
    assert d.log_lines("probe", domain="example.org", state="up")
