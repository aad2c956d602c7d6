"""The foundation's black-box tests: command line, config checking, status
JSON, control socket, reload, stop, spool lock and sd_notify, written to
/work/shared/DESIGN.md ("Command line", "Config file", status JSON).

The daemon's log lines are key=value with event=NAME; they are matched
loosely (event=reload with result=ok / anything else, event=stop, ...).
"""

import configparser
import json
import os
import re
import stat
import subprocess
import time

import pytest

import mxtest

EX_CONFIG = 78


def ac_version():
    with open(os.path.join(mxtest.SRCDIR, "configure.ac")) as f:
        m = re.search(r"AC_INIT\(\[[^\]]*\],\s*\[([^\]]+)\]", f.read())
    assert m, "no version in configure.ac"
    return m.group(1)


# ---------------------------------------------------------------- -t

def base_lines(d):
    """A minimal valid config for daemon D, one entry per line (1-based
    line N is base_lines(d)[N-1])."""
    return [
        "[server]",                                       # 1
        "hostname = mx.test",                             # 2
        "listen = 127.0.0.1:%d" % d.smtp_port,            # 3
        "spool_dir = %s" % d.spool_dir,                   # 4
        "control_socket = %s" % d.control_socket,         # 5
        "dns_servers = 127.0.0.1:%d" % d.dead_port,       # 6
        "",                                               # 7
        "[tenant:demo]",                                  # 8
        "domains = example.test",                         # 9
        "primary = 127.0.0.1:%d" % d.dead_port,           # 10
    ]


def insert(lines, lineno, *new):
    """Insert NEW so that its first line becomes line LINENO."""
    return lines[:lineno - 1] + list(new) + lines[lineno - 1:]


def replace(lines, lineno, new):
    out = list(lines)
    out[lineno - 1] = new
    return out


def delete(lines, lineno):
    return lines[:lineno - 1] + lines[lineno:]


# Each case: (id, edit(lines) -> lines, the line numbers an error may name;
# None = any line, for problems not tied to one line).
BROKEN = [
    ("unknown-key-server", lambda l: insert(l, 3, "frobnicate = yes"), {3}),
    ("unknown-key-tenant", lambda l: l + ["drain_rat = 5"], {11}),
    ("unknown-section", lambda l: l + ["", "[srever]", "hostname = x"], {12, 13}),
    ("bad-size-server", lambda l: insert(l, 3, "max_message_size = 10Q"), {3}),
    ("bad-size-tenant", lambda l: l + ["quota = lots"], {11}),
    ("bad-duration-server", lambda l: insert(l, 3, "smtp_timeout = 5x"), {3}),
    ("bad-duration-tenant", lambda l: l + ["probe_interval = soon"], {11}),
    ("bad-number", lambda l: insert(l, 3, "max_connections = many"), {3}),
    ("bad-hostport-listen", lambda l: replace(l, 3, "listen = 127.0.0.1:99999"), {3}),
    ("bad-hostport-metrics", lambda l: insert(l, 3, "metrics_listen = [::1:9325"), {3}),
    ("bad-hostport-primary", lambda l: replace(l, 10, "primary = 127.0.0.1:65536"), {10}),
    ("bad-tenant-name", lambda l: replace(l, 8, "[tenant:Bad.Name]"), {8, 9}),
    ("bad-tenant-name-empty", lambda l: replace(l, 8, "[tenant:]"), {8, 9}),
    ("domain-claimed-twice", lambda l: l + ["", "[tenant:other]", "domains = other.test, example.test",
                                            "primary = 127.0.0.1:25"], {9, 13}),
    ("domain-claimed-twice-case", lambda l: l + ["", "[tenant:other]", "domains = Example.TEST.",
                                                 "primary = 127.0.0.1:25"], {9, 13}),
    ("missing-spool-dir", lambda l: delete(l, 4), None),
    ("missing-domains", lambda l: delete(l, 9), None),
    ("initial-rate-above-rate", lambda l: l + ["drain_rate = 5", "drain_initial_rate = 10"],
     {8, 11, 12}),
    ("bad-tls-outbound", lambda l: l + ["", "[tls]", "outbound = sometimes"], {13}),
    ("bad-etrn-cidr", lambda l: l + ["etrn_from = 10.0.0.0/33"], {11}),
]


def test_check_valid_config_exits_0(daemon_factory):
    # mxspoold -c FILE -t exits 0 and says nothing alarming for a valid file.
    d = daemon_factory(start=False)
    r = d.check_config()
    assert r.returncode == 0, r.stderr
    d.write_config("\n".join(base_lines(d)) + "\n")
    r = d.check_config()
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case,edit,lines", BROKEN, ids=[c[0] for c in BROKEN])
def test_check_broken_config_exits_78_with_file_line(daemon_factory, case, edit, lines):
    # mxspoold -c FILE -t exits 78 and names FILE:LINE of the problem on stderr.
    d = daemon_factory(start=False)
    path = d.write_config("\n".join(edit(base_lines(d))) + "\n")
    r = d.check_config()
    assert r.returncode == EX_CONFIG, "rc %d, stderr: %s" % (r.returncode, r.stderr)
    found = [int(n) for n in re.findall(re.escape(path) + r":(\d+): \S", r.stderr)]
    assert found, "no '%s:LINE: message' on stderr: %r" % (path, r.stderr)
    if lines is not None:
        assert found[0] in lines, "%s names line %d, expected one of %s: %r" % (
            case, found[0], sorted(lines), r.stderr)
    assert not os.path.exists(d.control_socket)


def test_check_missing_file(daemon_factory):
    # -t on a file that does not exist fails and names the file.
    d = daemon_factory(start=False)
    missing = os.path.join(d.workdir, "nope.ini")
    r = d.check_config(missing)
    assert r.returncode != 0
    assert missing in r.stderr


def test_broken_config_refuses_to_start(daemon_factory):
    # mxspoold -c FILE with a broken file exits 78 at once with FILE:LINE.
    d = daemon_factory(start=False)
    path = d.write_config("\n".join(insert(base_lines(d), 3, "frobnicate = yes")) + "\n")
    d.start(wait=False)
    rc = d.wait_exit()
    assert rc == EX_CONFIG, d.log_tail()
    assert "%s:3:" % path in d.log()


def test_version():
    # mxspoold --version prints the package version and exits 0.
    r = subprocess.run([mxtest.binary("mxspoold"), "--version"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert ac_version() in r.stdout


def test_demo_config_passes_check(tmp_path):
    # contrib/mxspool-demo.ini passes -t and says what DESIGN.md promises.
    demo = os.path.join(mxtest.SRCDIR, "contrib", "mxspool-demo.ini")
    assert os.path.exists(demo), "contrib/mxspool-demo.ini is missing"
    r = subprocess.run([mxtest.binary("mxspoold"), "-c", demo, "-t"], capture_output=True,
                       text=True, timeout=mxtest.CTL_TIMEOUT, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    cp.read(demo)
    assert "127.0.0.1:2525" in cp["server"]["listen"]
    assert cp["server"]["spool_dir"].rstrip("/") == "./var/spool"
    assert cp["server"]["control_socket"] == "./var/run/control.sock"
    assert "example.test" in cp["tenant:demo"]["domains"]
    assert "127.0.0.1:2526" in cp["tenant:demo"]["primary"]


# ---------------------------------------------------------------- status

TOP_KEYS = {"version": str, "uptime_s": int, "accepted_total": int,
            "delivered_total": int, "bounced_total": int, "connections": int,
            "spool_bytes": int, "tenants": list}
TENANT_KEYS = {"name": str, "domains": list, "primary_state": str, "held": bool,
               "queued_messages": int, "queued_bytes": int, "oldest_age_s": int,
               "drain_rate": float, "drain_rate_limit": float, "in_flight": int,
               "delivered_total": int, "bounced_total": int, "eta_s": "int|null",
               # second round (DESIGN "Contract additions"): the long outage
               "queue_lifetime_s": int, "delay_warning_s": int,
               "primary_caps": "dict|null",
               # issue 9: the drain's concurrency feedback
               "drain_concurrency_limit": int, "limit_reason": str,
               # issue 11: recipients = learn
               "recipients_cached": int}


def check_type(where, key, value, kind):
    if kind is int:
        ok = type(value) is int
    elif kind is float:            # a JSON number: int or float, never a bool
        ok = type(value) in (int, float)
    elif kind == "int|null":
        ok = value is None or type(value) is int
    elif kind == "dict|null":
        ok = value is None or type(value) is dict
    else:
        ok = type(value) is kind
    assert ok, "%s.%s = %r is not %s" % (where, key, value, kind)


def check_status_shape(st):
    assert set(st) == set(TOP_KEYS), "top-level keys: extra %s, missing %s" % (
        sorted(set(st) - set(TOP_KEYS)), sorted(set(TOP_KEYS) - set(st)))
    for k, kind in TOP_KEYS.items():
        check_type("status", k, st[k], kind)
    for t in st["tenants"]:
        assert type(t) is dict
        assert set(t) == set(TENANT_KEYS), "tenant keys: extra %s, missing %s" % (
            sorted(set(t) - set(TENANT_KEYS)), sorted(set(TENANT_KEYS) - set(t)))
        for k, kind in TENANT_KEYS.items():
            check_type("tenant %s" % t.get("name"), k, t[k], kind)
        assert all(type(x) is str for x in t["domains"])
        assert t["primary_state"] in ("up", "down", "unknown")
        for k in ("queued_messages", "queued_bytes", "oldest_age_s", "in_flight",
                  "delivered_total", "bounced_total"):
            assert t[k] >= 0, k
        assert t["drain_rate"] >= 0 and t["drain_rate_limit"] >= 0
    for k in ("uptime_s", "accepted_total", "delivered_total", "bounced_total",
              "connections", "spool_bytes"):
        assert st[k] >= 0, k


def test_status_json_has_exactly_the_contract_keys(daemon_factory):
    # status --json has exactly DESIGN.md's keys and types, top level and per tenant.
    d = daemon_factory(tenants={
        "alpha": {"domains": ["a.test", "B.Test"], "primary": "127.0.0.1:%d" % mxtest.free_port(),
                  "drain_rate": 20, "drain_initial_rate": 1},
        "beta": {"domains": "c.test", "primary": "127.0.0.1:%d" % mxtest.free_port()},
    })
    st = d.status()
    check_status_shape(st)
    assert ac_version() in st["version"]
    by_name = {t["name"]: t for t in st["tenants"]}
    assert set(by_name) == {"alpha", "beta"}
    assert sorted(by_name["alpha"]["domains"]) == ["a.test", "b.test"]
    assert by_name["beta"]["domains"] == ["c.test"]
    for t in by_name.values():
        assert t["held"] is False
        assert t["queued_messages"] == 0 and t["in_flight"] == 0
    assert by_name["alpha"]["drain_rate_limit"] <= 20
    assert st["accepted_total"] == 0


def test_status_uptime_advances(daemon):
    # uptime_s counts seconds since start.
    a = daemon.status()["uptime_s"]
    time.sleep(1.2)
    b = daemon.status()["uptime_s"]
    assert b >= a + 1


def test_status_plain_text(daemon):
    # status without --json answers in text for people and names the tenant.
    r = daemon.ctl("status")
    assert r.returncode == 0, r.stderr
    assert "demo" in r.stdout


def test_ctl_finds_socket_from_config(daemon):
    # mxspoolctl -c FILE finds the control socket named in the config.
    r = daemon.ctl("status", "--json", use_config=True)
    assert r.returncode == 0, r.stderr
    check_status_shape(json.loads(r.stdout))


def test_ctl_without_daemon_fails(tmp_path):
    # mxspoolctl against a socket nobody serves fails with a message, quickly.
    sock = os.path.join(str(tmp_path), "none.sock")
    r = subprocess.run([mxtest.binary("mxspoolctl"), "-s", sock, "status"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert r.stderr.strip()


def test_ctl_unknown_command_fails(daemon):
    # An unknown command is an error, not a silent success.
    r = daemon.ctl("frobnicate")
    assert r.returncode != 0


def test_control_socket_mode_0660(daemon):
    # The control socket is a socket with mode 0660.
    st = os.stat(daemon.control_socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(stat.S_IMODE(st.st_mode))


def test_metrics_names(daemon):
    # /metrics serves every metric DESIGN.md lists, per tenant where it says {tenant}.
    body = daemon.metrics()
    for name in ("queue_messages", "queue_bytes", "queue_oldest_seconds", "primary_up",
                 "drain_rate_limit", "messages_accepted_total",
                 "messages_delivered_total", "messages_bounced_total"):
        assert re.search(r'^mxspool_%s\{[^}]*tenant="demo"[^}]*\} \S+' % name, body, re.M), \
            "mxspool_%s{tenant=\"demo\"} missing from /metrics" % name
    for name in ("connections", "spool_bytes"):
        assert re.search(r"^mxspool_%s(\{[^}]*\})? \S+" % name, body, re.M), name


# ---------------------------------------------------------------- reload

def reload_lines(d, after):
    return d.log_lines("reload", after=after, result=re.compile("."))


def test_sighup_applies_valid_config(daemon):
    # SIGHUP with a valid changed file applies it (a new tenant shows in status) and logs a reload.
    pid = daemon.pid
    up = daemon.status()["uptime_s"]
    mark = daemon.mark()
    tenants = dict(daemon.tenants)
    tenants["second"] = {"domains": ["second.test", "third.test"],
                         "primary": daemon.primary_hostport()}
    daemon.configure(tenants=tenants)
    daemon.reload()
    (line,) = daemon.wait_log("reload", after=mark, result="ok")[:1]
    st = daemon.status()
    by_name = {t["name"]: t for t in st["tenants"]}
    assert set(by_name) == {"demo", "second"}
    assert sorted(by_name["second"]["domains"]) == ["second.test", "third.test"]
    assert daemon.running and daemon.pid == pid
    assert st["uptime_s"] >= up, "uptime went back: the daemon restarted"


def test_ctl_reload_applies_valid_config(daemon):
    # mxspoolctl reload applies a valid file, says so, and exits 0.
    mark = daemon.mark()
    daemon.tenants["demo"]["domains"] = ["example.test", "more.test"]
    daemon.write_config()
    r = daemon.ctl("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    daemon.wait_log("reload", after=mark, result="ok")
    assert sorted(daemon.tenant_status("demo")["domains"]) == ["example.test", "more.test"]


def broken_reload_file(d):
    """Rewrite D's config with an unknown key on line 2; return the path."""
    lines = d.config_text().split("\n")
    assert lines[0] == "[server]"
    return d.write_config("\n".join(insert(lines, 2, "frobnicate = yes")))


def summary(st):
    return sorted((t["name"], sorted(t["domains"])) for t in st["tenants"])


def assert_refused_and_old_config_kept(d, mark, path, before):
    lines = d.wait_log("reload", after=mark, result=lambda v: v != "ok")
    assert any("%s:2:" % path in l.get("error", l["_line"]) for l in lines), \
        "no FILE:LINE in the reload error: %r" % [l["_line"] for l in lines]
    assert not d.log_lines("reload", after=mark, result="ok")
    assert d.running
    assert summary(d.status()) == before
    # The old config keeps working: a good file afterwards reloads fine.
    d.tenants["demo"]["domains"] = ["example.test", "after.test"]
    d.write_config()
    mark2 = d.mark()
    r = d.ctl("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    d.wait_log("reload", after=mark2, result="ok")
    assert sorted(d.tenant_status("demo")["domains"]) == ["after.test", "example.test"]


def test_sighup_broken_config_keeps_old(daemon):
    # SIGHUP with a broken file: still running, error logged with FILE:LINE, status unchanged.
    before = summary(daemon.status())
    mark = daemon.mark()
    path = broken_reload_file(daemon)
    daemon.reload()
    assert_refused_and_old_config_kept(daemon, mark, path, before)


def test_ctl_reload_broken_config_keeps_old(daemon):
    # mxspoolctl reload with a broken file fails visibly (exit != 0, FILE:LINE) and keeps the old config.
    before = summary(daemon.status())
    mark = daemon.mark()
    path = broken_reload_file(daemon)
    r = daemon.ctl("reload")
    assert r.returncode != 0, "a refused reload must not look like success"
    assert "%s:2:" % path in r.stdout + r.stderr
    assert_refused_and_old_config_kept(daemon, mark, path, before)


# ---------------------------------------------------------------- stop, lock

def test_sigterm_exits_0(daemon):
    # SIGTERM stops the daemon with exit 0 within the bound, logging a stop line.
    t0 = time.monotonic()
    rc = daemon.stop()
    assert rc == 0, daemon.log_tail()
    assert time.monotonic() - t0 < mxtest.STOP_TIMEOUT
    assert daemon.log_lines("stop")


def test_restart_after_sigterm_and_after_kill9(daemon):
    # The daemon comes back on the same spool after a clean stop and after SIGKILL.
    daemon.restart()
    daemon.kill9()
    assert daemon.killed
    daemon.start()
    check_status_shape(daemon.status())


def test_second_daemon_on_same_spool_refused(daemon_factory):
    # A second mxspoold on the same spool_dir exits non-zero naming the lock; the first keeps running.
    d1 = daemon_factory()
    d2 = daemon_factory(start=False, server={"spool_dir": d1.spool_dir})
    d2.start(wait=False)
    rc = d2.wait_exit()
    assert rc is not None, "second daemon still running"
    assert rc != 0
    assert "lock" in d2.log().lower(), d2.log_tail()
    assert d1.running
    check_status_shape(d1.status())


# ---------------------------------------------------------------- sd_notify

def test_sd_notify(daemon_factory, notify_socket):
    # sd_notify: READY=1 after start, RELOADING=1 then READY=1 on SIGHUP (valid or not), STOPPING=1 on SIGTERM.
    d = daemon_factory(env={"NOTIFY_SOCKET": notify_socket.path})
    i = notify_socket.wait_for("READY=1")
    assert "RELOADING=1" not in notify_socket.assignments()[:i]

    mark = d.mark()
    d.tenants["demo"]["domains"] = ["example.test", "hup.test"]
    d.write_config()
    d.reload()
    j = notify_socket.wait_for("RELOADING=1", after=i + 1)
    k = notify_socket.wait_for("READY=1", after=j + 1)
    d.wait_log("reload", after=mark, result="ok")

    broken_reload_file(d)
    d.reload()
    j = notify_socket.wait_for("RELOADING=1", after=k + 1)
    k = notify_socket.wait_for("READY=1", after=j + 1)

    assert d.stop() == 0
    notify_socket.wait_for("STOPPING=1", after=k + 1, timeout=1)
