"""Fleet (issue 16): several mxspoold share one tenant's drain budget
through a Redis they all use, so the primary sees drain_rate in total.

Each test starts its own redis-server (Debian's) on a free loopback port,
never 6379, and stops it by PID.  Three daemons on one machine stand for
three equal-preference backup MX hosts: each has its own spool, its own
node name and [server] hostname (the primary tells them apart by EHLO), and
one aiosmtpd primary that is down while the spools fill.

Numbers (kept low so that CI stays fast on two loaded cores): drain_rate
20 msg/s, 80 messages per node for the rate test (240 in all, about 12 s),
60 per node for the others.  The rate is measured at the primary between
the 20th and the 80th percentile of the arrivals.
"""
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time

import pytest

import mxtest

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
pytestmark = pytest.mark.skipif(
    not os.access(REDIS, os.X_OK),
    reason="redis-server is not installed (apt-get install redis-server): "
           "the fleet tests need a Redis of their own")

RATE = 20.0


class Redis:
    """One redis-server on 127.0.0.1:PORT, no persistence, and a tiny RESP
    client for the checks."""

    def __init__(self, workdir, password=None):
        self.port = mxtest.free_port()
        self.workdir = workdir
        self.password = password
        self.proc = None

    def start(self):
        extra = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.workdir] + extra,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mxtest.wait_until(lambda: self._ping(), 10, what="redis-server answers PING")
        return self

    def _ping(self):
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def cmd(self, *args):
        """Send one command, return the decoded reply (bulk/array/int)."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        if self.password and args[0] != "AUTH":
            out = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (
                len(self.password), self.password.encode()) + out
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(out)
            if self.password and args[0] != "AUTH":
                f = s.makefile("rb")
                self._read(f)
                return self._read(f)
            f = s.makefile("rb")
            return self._read(f)

    def _read(self, f):
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AssertionError("redis: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return [self._read(f) for _ in range(max(n, 0))]
        raise AssertionError("redis: unexpected reply %r" % line)

    def now_ms(self):
        sec, usec = self.cmd("TIME")
        return int(sec) * 1000 + int(usec) // 1000


@pytest.fixture
def redis(tmp_path):
    r = Redis(str(tmp_path))
    r.start()
    yield r
    r.kill()


def tenant_keys(primary, **extra):
    keys = {"domains": ["example.test"], "primary": primary.hostport,
            "drain_rate": RATE, "drain_initial_rate": RATE, "drain_ramp": "0",
            "probe_interval": "1s", "probe_up_after": 1,
            "drain_concurrency": 4}
    keys.update(extra)
    return {"demo": keys}


def make_node(daemon_factory, primary, redis, k, **tenant):
    return daemon_factory(
        primary=primary, server={"hostname": "node%d.test" % k},
        tenants=tenant_keys(primary, **tenant),
        raw="[fleet]\nredis = 127.0.0.1:%d\nnode = node%d\n" % (redis.port, k))


def fill(daemon, k, n, body="body\r\n"):
    s = smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30)
    for i in range(n):
        s.sendmail("a@sender.test", ["u%d@example.test" % (i % 7)],
                   "Message-ID: <n%d-%d@sender.test>\r\nSubject: n%d m%d\r\n\r\n"
                   "%s" % (k, i, k, i, body))
    s.quit()
    mxtest.wait_until(lambda: daemon.tenant_status("demo")["queued_messages"] == n,
                      10, what="node%d has %d queued" % (k, n))


def fleet_status(daemon):
    r = daemon.ctl("status", "--fleet", "--json", check=True)
    return json.loads(r.stdout)


def node_of(m):
    return int(m.header("Message-ID").split("-")[0][2:])


def measured_rate(arrivals):
    a = sorted(arrivals)
    lo, hi = int(len(a) * 0.2), int(len(a) * 0.8)
    return (hi - lo) / (a[hi] - a[lo])


def max_in_window(arrivals, window):
    a = sorted(arrivals)
    best, j = 0, 0
    for i in range(len(a)):
        while a[i] - a[j] > window:
            j += 1
        best = max(best, i - j + 1)
    return best


def assert_once(messages, nodes, per_node):
    ids = [m.header("Message-ID") for m in messages]
    assert len(ids) == len(set(ids)), "a message arrived twice"
    want = {"<n%d-%d@sender.test>" % (k, i) for k in range(nodes) for i in range(per_node)}
    assert set(ids) == want


def three_full_nodes(daemon_factory, primary_factory, redis, per):
    """Three nodes with PER messages each, all seen alive in the fleet; the
    primary (returned, not started) is down meanwhile."""
    primary = primary_factory(start=False)
    nodes = [make_node(daemon_factory, primary, redis, k) for k in range(3)]
    for k, d in enumerate(nodes):
        fill(d, k, per)
    mxtest.wait_until(lambda: fleet_status(nodes[0])["nodes_alive"] == 3, 10,
                      what="three nodes alive in the fleet view")
    return primary, nodes


def test_three_nodes_share_drain_rate(daemon_factory, primary_factory, redis):
    per = 80
    primary, nodes = three_full_nodes(daemon_factory, primary_factory, redis, per)
    primary.start()
    got = primary.wait_for(3 * per, timeout=3 * per / RATE * 2 + 30)
    rate = measured_rate([m.arrived for m in got])
    assert abs(rate - RATE) <= 0.1 * RATE, "rate at the primary %.2f" % rate
    # Every node drained, not one alone: the budget is shared.
    for k in range(3):
        assert sum(1 for m in got if node_of(m) == k) == per
    # Never more than the rate plus one batch per node (and the bucket's
    # depth of one batch) in any second.
    assert max_in_window([m.arrived for m in got], 1.0) <= RATE + 4 * 2 + 2
    time.sleep(1.5)
    assert_once(primary.messages, 3, per)
    st = nodes[1].status()
    assert st["fleet_state"] == "ok"
    fs = fleet_status(nodes[1])
    assert fs["fleet_state"] == "ok" and fs["node"] == "node1"
    assert sorted(n["node"] for n in fs["nodes"]) == ["node0", "node1", "node2"]
    demo = [t for t in fs["tenants"] if t["name"] == "demo"][0]
    assert demo["nodes"] == 3 and demo["queued_messages"] == 0
    assert demo["shared_limit"] == pytest.approx(RATE)
    text = nodes[1].ctl("status", "--fleet", check=True).stdout
    assert "node2" in text and "(fleet)" in text
    metrics = nodes[2].metrics()
    assert 'mxspool_fleet_queue_messages{node="node0",tenant="demo"} 0' in metrics
    assert "mxspool_fleet_degraded 0" in metrics
    print("fleet rate with 3 nodes: %.2f msg/s (drain_rate %.0f)" % (rate, RATE))


def test_single_node_fleet_rate(daemon_factory, primary_factory, redis):
    per = 50
    primary = primary_factory(start=False)
    d = make_node(daemon_factory, primary, redis, 0)
    fill(d, 0, per)
    primary.start()
    got = primary.wait_for(per, timeout=per / RATE * 2 + 30)
    rate = measured_rate([m.arrived for m in got])
    assert abs(rate - RATE) <= 0.1 * RATE, "rate at the primary %.2f" % rate
    print("fleet rate with 1 node: %.2f msg/s" % rate)


def test_421_to_one_node_slows_all(daemon_factory, primary_factory, redis,
                                   monkeypatch):
    per = 70
    blocked = {"on": False, "seen": 0}
    orig = mxtest._PrimaryHandler.handle_MAIL

    async def mail(self, server, session, envelope, address, options):
        # node0 (told by its EHLO name) gets 421 at MAIL while "on".
        if blocked["on"] and session.host_name == "node0.test":
            blocked["seen"] += 1
            return "421 4.3.2 too busy for node0"
        return await orig(self, server, session, envelope, address, options)

    monkeypatch.setattr(mxtest._PrimaryHandler, "handle_MAIL", mail)
    primary, nodes = three_full_nodes(daemon_factory, primary_factory, redis, per)
    primary.start()
    primary.wait_for(40, timeout=30)
    blocked["on"] = True
    t0 = time.monotonic()
    mxtest.wait_until(lambda: blocked["seen"] > 0, 15, what="node0 got its 421")
    t421 = time.monotonic()
    mxtest.wait_until(lambda: any(n.log_lines("fleet", shared_limit="cut") for n in nodes),
                      5, what="the shared limit was cut")
    # The limit each node last got from Redis, polled while node0 is cut
    # off (a node learns it at its next grant).
    lims, lims_status = [], []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for n in nodes[1:]:
            lims += [t["shared_limit"] for t in fleet_status(n)["tenants"]
                     if t["name"] == "demo" and t["shared_limit"] is not None]
            # status shows the fleet's bound as the node's limit
            lims_status.append(n.tenant_status("demo")["drain_rate_limit"])
        time.sleep(0.2)
    blocked["on"] = False
    others = [m.arrived for m in primary.messages
              if node_of(m) != 0 and t421 + 0.3 <= m.arrived <= t421 + 3.0]
    rate_others = len(others) / 2.7
    # Before: about RATE shared by three; after the cut nodes 1 and 2
    # together get well under RATE although node0 sends nothing.
    assert rate_others <= 0.75 * RATE, "nodes 1+2 sent %.1f msg/s after the 421" % rate_others
    lim = min(lims)
    assert lim <= 0.6 * RATE + 0.5, "shared limit never below %.1f" % lim
    assert min(lims_status) <= 0.6 * RATE + 0.5
    got = primary.wait_for(3 * per, timeout=60)
    assert_once(got, 3, per)
    print("after a 421 to node0, nodes 1+2: %.1f msg/s (limit %.1f, waited %.1fs)"
          % (rate_others, lim, t421 - t0))


def test_redis_down_keeps_rate_and_loses_nothing(daemon_factory, primary_factory, redis):
    per = 70
    primary, nodes = three_full_nodes(daemon_factory, primary_factory, redis, per)
    primary.start()
    primary.wait_for(40, timeout=30)
    marks = [n.mark() for n in nodes]
    redis.kill()
    t_kill = time.monotonic()
    for n, m in zip(nodes, marks):
        n.wait_log("fleet", state="degraded", after=m, timeout=10)
    assert nodes[0].status()["fleet_state"] == "degraded"
    # Each node's limit is its share now: drain_rate / 3.
    assert nodes[0].tenant_status("demo")["drain_rate_limit"] == \
        pytest.approx(RATE / 3, abs=0.01)
    assert "mxspool_fleet_degraded 1" in nodes[0].metrics()
    time.sleep(4.0)
    window = [m.arrived for m in primary.messages if t_kill + 0.5 <= m.arrived <= t_kill + 4.0]
    rate_down = len(window) / 3.5
    assert rate_down <= RATE * 1.1, "degraded fleet sent %.1f msg/s" % rate_down
    assert rate_down >= RATE / 3 * 0.8, "degraded nodes stopped (%.1f msg/s)" % rate_down
    # Redis comes back on the same port: the shared bucket resumes, with
    # no burst (one batch of depth at most).
    marks = [n.mark() for n in nodes]
    redis.start()
    for n, m in zip(nodes, marks):
        n.wait_log("fleet", state="ok", after=m, timeout=15)
    t_back = time.monotonic()
    got = primary.wait_for(3 * per, timeout=60)
    after = [m.arrived for m in got if m.arrived >= t_back]
    if len(after) > 10:
        assert max_in_window(after, 1.0) <= RATE + 4 * 2 + 2
    time.sleep(1.0)
    assert_once(primary.messages, 3, per)
    print("degraded (3 nodes, Redis killed): %.1f msg/s" % rate_down)


def test_killed_node_gives_its_leases_back(daemon_factory, primary_factory, redis):
    # One connection in the whole fleet; node0 takes it and holds it on a
    # slow primary; killed with -9 it cannot give it back: the lease
    # expires (TTL 10 s) and node1 delivers.
    primary = primary_factory(start=False)
    n0 = make_node(daemon_factory, primary, redis, 0, drain_concurrency=1)
    fill(n0, 0, 20)
    primary.slow(2000)
    primary.start()
    key = "mxspool:tenant:demo:conns"
    mxtest.wait_until(lambda: redis.cmd("ZCARD", key) == 1, 15,
                      what="node0 holds the fleet's only connection lease")
    lease = redis.cmd("ZRANGE", key, 0, -1)[0]
    assert lease.startswith("node0:")
    n1 = make_node(daemon_factory, primary, redis, 1, drain_concurrency=1)
    fill(n1, 1, 5)
    time.sleep(1.5)
    assert not any(node_of(m) == 1 for m in primary.messages), \
        "node1 delivered while node0 held the only lease"
    n0.kill9()
    t_kill = time.monotonic()
    primary.slow(0)
    mxtest.wait_until(lambda: sum(1 for m in primary.messages if node_of(m) == 1) == 5,
                      25, what="node1 delivered after node0's lease expired")
    took = time.monotonic() - t_kill
    assert took <= 10.0 + 5.0, "the lease came back after %.1f s" % took
    assert redis.cmd("ZSCORE", key, lease) is None or \
        int(float(redis.cmd("ZSCORE", key, lease))) <= redis.now_ms()
    print("killed node's lease back after %.1f s (TTL 10 s)" % took)


def test_fleet_config_and_commands_without_fleet(daemon_factory, primary, tmp_path):
    d = daemon_factory(start=False, primary=primary,
                       raw="[fleet]\nredis = redis.example.net:6379\n")
    r = d.check_config()
    assert r.returncode == 78
    assert "redis: redis.example.net is not an IP address" in r.stderr
    d.configure(raw="[fleet]\nredis = 127.0.0.1\nnodes = x\n")
    r = d.check_config()
    assert r.returncode == 78 and "unknown key" in r.stderr and "[fleet]" in r.stderr
    d.configure(raw="[fleet]\nredis = 127.0.0.1\nnode = not a name\n")
    assert d.check_config().returncode == 78
    d.configure(raw="[flet]\nredis = 127.0.0.1\n")
    r = d.check_config()
    assert r.returncode == 78 and "unknown section" in r.stderr
    assert "[fleet]" in r.stderr   # among the sections allowed
    # No [fleet]: no fleet_state in status, and status --fleet is an error.
    d.configure(raw="")
    d.start()
    assert "fleet_state" not in d.status()
    r = d.ctl("status", "--fleet")
    assert r.returncode == 65 and "no fleet" in (r.stdout + r.stderr)
    r = d.ctl("status", "--flet")
    assert r.returncode == 65 and "unknown option" in (r.stdout + r.stderr)


def test_redis_absent_from_start_drains_alone(daemon_factory, primary_factory):
    # A Redis that never answers: the node is degraded from the start,
    # N = 1 (it never saw another node), and drains at drain_rate.
    primary = primary_factory(start=False)
    dead = mxtest.free_port()
    d = daemon_factory(
        primary=primary, server={"hostname": "node0.test"},
        tenants=tenant_keys(primary),
        raw="[fleet]\nredis = 127.0.0.1:%d\nnode = node0\n" % dead)
    fill(d, 0, 30)
    assert d.status()["fleet_state"] == "degraded"
    fs = fleet_status(d)
    assert fs["fleet_state"] == "degraded" and fs["nodes_alive"] == 1
    primary.start()
    got = primary.wait_for(30, timeout=30)
    assert_once(got, 1, 30)
    assert measured_rate([m.arrived for m in got]) <= RATE * 1.1


def test_two_nodes_share_drain_bandwidth(daemon_factory, primary_factory, redis):
    # drain_rate is not the limit here: 20 KiB/s for the fleet, ~4 KiB
    # messages, so about 5 msg/s in total (each node alone would allow
    # 20 KiB/s of its own).
    bw, per = 20480, 20
    primary = primary_factory(start=False)
    nodes = [make_node(daemon_factory, primary, redis, k, drain_bandwidth="20K")
             for k in range(2)]
    for k, d in enumerate(nodes):
        fill(d, k, per, body="x" * 76 + "\r\n" * 1 + ("y" * 78 + "\r\n") * 50)
    primary.start()
    got = primary.wait_for(2 * per, timeout=2 * per * 4096 / bw * 2 + 30)
    a = sorted(got, key=lambda m: m.arrived)
    lo, hi = int(len(a) * 0.2), int(len(a) * 0.8)
    nbytes = sum(len(m.data) for m in a[lo + 1:hi + 1])
    rate = nbytes / (a[hi].arrived - a[lo].arrived)
    assert abs(rate - bw) <= 0.15 * bw, "bytes/s at the primary %.0f" % rate
    assert {node_of(m) for m in got} == {0, 1}
    assert_once(got, 2, per)
    print("fleet bandwidth with 2 nodes: %.0f B/s (drain_bandwidth %d)" % (rate, bw))


def test_clean_stop_gives_leases_back_at_once(daemon_factory, primary_factory, redis):
    primary = primary_factory(start=False)
    n0 = make_node(daemon_factory, primary, redis, 0, drain_concurrency=1)
    fill(n0, 0, 10)
    primary.slow(1500)
    primary.start()
    key = "mxspool:tenant:demo:conns"
    mxtest.wait_until(lambda: redis.cmd("ZCARD", key) == 1, 15,
                      what="node0 holds a connection lease")
    assert "node0" in redis.cmd("ZRANGE", "mxspool:nodes", 0, -1)
    assert n0.stop() == 0
    # SIGTERM: the lease and the node entry are removed on the way out,
    # not left for their TTLs.
    assert redis.cmd("ZCARD", key) == 0
    assert "node0" not in redis.cmd("ZRANGE", "mxspool:nodes", 0, -1)
    assert redis.cmd("EXISTS", "mxspool:node:node0") == 0


def test_stop_with_a_hung_redis_is_bounded(daemon_factory, primary, redis):
    d = daemon_factory(primary=primary, tenants=tenant_keys(primary),
                       raw="[fleet]\nredis = 127.0.0.1:%d\nnode = node0\n" % redis.port)
    mxtest.wait_until(lambda: d.status()["fleet_state"] == "ok", 10,
                      what="node0 reached Redis")
    # Stopped before the node notices: its goodbye is never answered, the
    # stop waits for it at most FLEET_GOODBYE_MS.
    redis.proc.send_signal(signal.SIGSTOP)    # accepts, never answers
    t = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t < mxtest.scaled(5.0)


def test_redis_password(daemon_factory, primary, tmp_path):
    r = Redis(str(tmp_path), password="s3cret")
    r.start()
    try:
        raw = "[fleet]\nredis = 127.0.0.1:%d\nnode = node%d\nredis_password = %s\n"
        good = daemon_factory(primary=primary, tenants=tenant_keys(primary),
                              raw=raw % (r.port, 0, "s3cret"))
        bad = daemon_factory(primary=primary, tenants=tenant_keys(primary),
                             raw=raw % (r.port, 1, "wrong"))
        mxtest.wait_until(lambda: good.status()["fleet_state"] == "ok", 10,
                          what="the node with the password reached Redis")
        bad.wait_log("fleet", call="auth", timeout=10)
        assert bad.status()["fleet_state"] == "degraded"
        time.sleep(1.5)
        assert bad.status()["fleet_state"] == "degraded"
        assert r.cmd("ZRANGE", "mxspool:nodes", 0, -1) == ["node0"]
    finally:
        r.kill()


def test_one_node_ramping_alone_does_not_hold_back_the_others(
        daemon_factory, primary_factory, redis):
    # node1 ramps from 1 msg/s over 10 minutes (a node that just
    # restarted) and is draining; then node0, at full speed, gets its
    # backlog.  The fleet runs at the highest limit a node asks with:
    # node0 takes what node1 does not use.
    per = 60
    primary = primary_factory(start=False)
    n1 = make_node(daemon_factory, primary, redis, 1, drain_ramp="10m",
                   drain_initial_rate=1)
    n0 = make_node(daemon_factory, primary, redis, 0)
    fill(n1, 1, per)
    primary.start()
    mxtest.wait_until(lambda: len(primary.messages) >= 3, 15,
                      what="node1 draining slowly")
    fill(n0, 0, per)
    mxtest.wait_until(lambda: sum(1 for m in primary.messages if node_of(m) == 0) >= per,
                      30, what="node0's backlog delivered")
    got = list(primary.messages)
    a0 = [m.arrived for m in got if node_of(m) == 0]
    rate0 = measured_rate(a0)
    assert rate0 >= 0.8 * RATE, "node0 held back to %.1f msg/s" % rate0
    during = [m for m in got if node_of(m) == 1 and a0[0] <= m.arrived <= a0[-1]]
    assert len(during) >= 1, "node1 stopped while node0 drained"
    print("ramping node1 beside node0: node0 %.1f msg/s, node1 %d messages meanwhile"
          % (rate0, len(during)))
