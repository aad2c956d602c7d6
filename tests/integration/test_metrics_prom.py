"""/metrics as Prometheus reads it: latency histograms, quota use, probe
counters, checked by promtool; the alert rules and the Grafana dashboard in
contrib/ checked against the metrics the daemon really serves.

promtool comes with Debian's prometheus package (contrib/dev.sh installs
it); without it the promtool checks are skipped with a message, the rest
still runs.
"""

import json
import os
import re
import shutil
import smtplib
import subprocess

import pytest

from mxtest import scaled, wait_until

SRCDIR = os.environ.get("MXSPOOL_SRCDIR",
                        os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def send(d, n, to="user@example.test"):
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=scaled(20))
    try:
        for i in range(n):
            s.sendmail("sender@client.test", [to],
                       "Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
    finally:
        s.quit()


def sample(body, name, **labels):
    """The value of the one sample NAME{LABELS...}, or None."""
    for line in body.splitlines():
        m = re.match(r"^([a-z_]+)(\{([^}]*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


def tenant(primary, **kw):
    t = {"domains": ["example.test"], "primary": primary.hostport,
         "probe_interval": "1s", "probe_up_after": 1, "drain_ramp": "0s",
         "drain_rate": 50, "drain_initial_rate": 50}
    t.update(kw)
    return t


def test_histograms_count_what_happened(daemon_factory, primary):
    # Every accepted message is one accept-latency observation; each delivery
    # one delivery-latency and one queue-delay observation; probes are
    # counted by result; the histograms are cumulative and end at +Inf.
    d = daemon_factory(tenants={"demo": tenant(primary)})
    wait_until(lambda: d.tenant_status("demo")["primary_state"] == "up",
               scaled(15), what="primary up")
    send(d, 4)
    primary.wait_for(4, timeout=scaled(20))
    wait_until(lambda: sample(d.metrics(), "mxspool_delivery_latency_seconds_count",
                              tenant="demo") == 4, scaled(10), what="4 deliveries counted")
    body = d.metrics()
    assert sample(body, "mxspool_accept_latency_seconds_count", tenant="demo") == 4
    assert sample(body, "mxspool_queue_delay_seconds_count", tenant="demo") == 4
    # A commit to a local disk takes well under 60 s: all 4 below the top bound.
    assert sample(body, "mxspool_accept_latency_seconds_bucket", tenant="demo", le="60") == 4
    acc = sample(body, "mxspool_accept_latency_seconds_sum", tenant="demo")
    assert 0 < acc < 4 * 60
    buckets = [(float(le), v) for le, v in re.findall(
        r'^mxspool_accept_latency_seconds_bucket\{tenant="demo",le="([0-9.e+-]+)"\} (\S+)$',
        body, re.M)]
    assert len(buckets) >= 10
    assert buckets == sorted(buckets), "le ascending and counts cumulative"
    assert sample(body, "mxspool_accept_latency_seconds_bucket",
                  tenant="demo", le="+Inf") == 4
    # Four acknowledged messages took at least one fdatasync.
    assert sample(body, "mxspool_journal_syncs_total") >= 1
    assert sample(body, "mxspool_probes_total", tenant="demo", result="ok") >= 1
    assert sample(body, "mxspool_probes_total", tenant="demo", result="failed") == 0
    # The primary stops answering: the next delivery marks it down, and the
    # probes that follow count as failed.
    primary.refuse()
    send(d, 1)
    wait_until(lambda: (sample(d.metrics(), "mxspool_probes_total", tenant="demo",
                               result="failed") or 0) >= 1, scaled(15), what="a failed probe")


def test_quota_use(daemon_factory, primary):
    # mxspool_quota_used_ratio is the fuller of bytes and messages against
    # the quota; the limits themselves are exported (0 = none).
    primary.refuse()
    d = daemon_factory(tenants={"demo": tenant(primary, quota_messages=8, quota="1G"),
                                "free": dict(tenant(primary), domains=["free.test"])})
    send(d, 2)
    body = d.metrics()
    assert sample(body, "mxspool_quota_messages", tenant="demo") == 8
    assert sample(body, "mxspool_quota_bytes", tenant="demo") == 1 << 30
    # 2 of 8 messages is fuller than a few hundred bytes of 1 GiB.
    assert sample(body, "mxspool_quota_used_ratio", tenant="demo") == pytest.approx(0.25)
    # "free" has the default byte quota and nothing queued.
    assert sample(body, "mxspool_quota_bytes", tenant="free") > 0
    assert sample(body, "mxspool_quota_used_ratio", tenant="free") == 0
    send(d, 2, to="user@free.test")
    ratio = sample(d.metrics(), "mxspool_quota_used_ratio", tenant="free")
    assert 0 < ratio < 0.001


@needs_promtool
def test_promtool_check_metrics(daemon_factory, primary):
    # promtool's linter finds nothing to say about a real scrape with every
    # family populated (histograms included).
    d = daemon_factory(tenants={"demo": tenant(primary)})
    send(d, 2)
    primary.wait_for(2, timeout=scaled(20))
    body = d.metrics()
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, text=True,
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", \
        "promtool check metrics: rc=%d\n%s%s" % (r.returncode, r.stdout, r.stderr)


@needs_promtool
def test_promtool_alert_rules():
    # The shipped alert rules are valid and their unit tests pass (they fire
    # on the series that should fire them, and only on those).
    rules = os.path.join(SRCDIR, "contrib", "prometheus-rules.yml")
    r = subprocess.run([PROMTOOL, "check", "rules", rules], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    r = subprocess.run([PROMTOOL, "test", "rules", "rules-test.yml"],
                       cwd=os.path.join(SRCDIR, "tests", "prometheus"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_uses_served_metrics(daemon_factory, primary):
    # The Grafana dashboard is valid JSON, and every mxspool_* series its
    # panels query is one the daemon serves (a renamed metric breaks this).
    path = os.path.join(SRCDIR, "contrib", "grafana", "mxspool-dashboard.json")
    with open(path) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set(re.findall(r"\b(mxspool_[a-z_]+)", " ".join(exprs)))
    d = daemon_factory(tenants={"demo": tenant(primary)})
    served = set(re.findall(r"^# TYPE (mxspool_[a-z_]+) ", d.metrics(), re.M))
    served_series = set(served)
    for name in served:
        served_series |= {name + "_bucket", name + "_sum", name + "_count"}
    missing = sorted(used - served_series)
    assert not missing, "dashboard queries metrics /metrics lacks: %s" % missing
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
