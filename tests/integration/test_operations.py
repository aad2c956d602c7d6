"""Operating the relay: the sample configs in contrib/ pass `mxspoold -t`,
and a reload says which changed keys wait for a restart instead of
ignoring them silently (issue 12, items 8 and 9)."""

import glob
import os
import re
import subprocess

import pytest

import mxtest

SAMPLES = sorted(glob.glob(os.path.join(mxtest.SRCDIR, "contrib", "examples", "*.ini")))


def test_the_three_sample_uses_exist():
    names = {os.path.basename(p) for p in SAMPLES}
    assert {"backup-one-partner.ini", "isp-two-tenants.ini", "gentle-drain.ini"} <= names


@pytest.mark.parametrize("path", SAMPLES + [
    os.path.join(mxtest.SRCDIR, "contrib", "mxspool.ini.example"),
    os.path.join(mxtest.SRCDIR, "contrib", "mxspool-demo.ini")],
    ids=os.path.basename)
def test_sample_config_passes_check(path):
    r = subprocess.run([mxtest.binary("mxspoold"), "-c", path, "-t"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_two_tenant_sample_keeps_tenants_apart():
    """The ISP sample is what it says: two tenants, different quotas, drain
    rates and lifetimes (read back through a running daemon would need the
    real ports; the file itself is checked here)."""
    import configparser
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cp.read(os.path.join(mxtest.SRCDIR, "contrib", "examples", "isp-two-tenants.ini"))
    a, b = cp["tenant:partner-a"], cp["tenant:partner-b"]
    assert a["quota"] != b["quota"] and a["drain_rate"] != b["drain_rate"]
    assert a["queue_lifetime"] != b["queue_lifetime"]


RESTART_ONLY = {
    "dns_servers": lambda d: "127.0.0.1:%d" % mxtest.free_port(),
    "commit_window": lambda d: "5ms",
    "metrics_listen": lambda d: "127.0.0.1:%d" % mxtest.free_port(),
}


def restart_notes(d, after):
    return {l["key"] for l in d.log_lines("reload", after=after)
            if l.get("note") == "takes effect at the next restart"}


def test_reload_names_every_key_that_needs_a_restart(daemon):
    mark = daemon.mark()
    daemon.configure(server={k: f(daemon) for k, f in RESTART_ONLY.items()})
    daemon.reload()
    daemon.wait_log("reload", after=mark, result="ok")
    assert restart_notes(daemon, mark) == set(RESTART_ONLY)
    # The daemon still runs on what it started with, so a second reload of
    # the same file says the same: nothing is forgotten after one warning.
    mark = daemon.mark()
    daemon.reload()
    daemon.wait_log("reload", after=mark, result="ok")
    assert restart_notes(daemon, mark) == set(RESTART_ONLY)


def test_reload_of_an_unchanged_file_notes_nothing(daemon):
    mark = daemon.mark()
    daemon.reload()
    daemon.wait_log("reload", after=mark, result="ok")
    assert restart_notes(daemon, mark) == set()
