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


# ---------------------------------------------------------------- watch

def test_watch_plain_frames(daemon):
    """Not a terminal: frames follow each other on stdout, each with the
    header, the tenant's row and its progress bar; --count bounds it."""
    r = daemon.ctl("watch", "--count", "2", "--interval", "0.2", check=True)
    frames = [f for f in re.split(r"(?m)^(?=mxspool )", r.stdout) if f]
    assert len(frames) == 2, r.stdout
    for f in frames:
        lines = f.splitlines()
        assert lines[0].startswith("mxspool "), f
        assert any(l.startswith("TENANT ") for l in lines), f
        row = [l for l in lines if l.startswith("demo ")]
        assert row and re.search(r"\bdown\b|\bunknown\b", row[0]), f
        assert any("delivered" in l and "queued" in l for l in lines), f
        assert all(len(l) <= 100 for l in lines), f


def test_watch_bad_arguments(daemon):
    r = daemon.ctl("watch", "--count", "0")
    assert r.returncode == 64 and "--count" in r.stderr
    r = daemon.ctl("watch", "--bogus")
    assert r.returncode == 64 and "unknown argument" in r.stderr


def test_watch_full_screen_on_a_terminal(daemon):
    """On a terminal the frame is painted with ncurses (cursor addressing,
    the terminal restored at the end) at the terminal's width."""
    import fcntl
    import pty
    import struct
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execv(mxtest.binary("mxspoolctl"),
                 ["mxspoolctl", "-s", daemon.control_socket, "watch", "--count", "1"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    out = b""
    deadline = time.monotonic() + mxtest.scaled(20)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out[-500:]
    text = out.decode("utf-8", "replace")
    assert "\x1b[" in text, "no terminal control sequences: not painted with curses"
    assert "TENANT" in text and "demo" in text and "q: quit" in text


def test_ctl_reload_says_which_keys_wait_for_a_restart(daemon):
    daemon.configure(server={"commit_window": "7ms"})
    r = daemon.ctl("reload", check=True)
    assert "restart needed for: commit_window" in r.stdout, r.stdout
    r = daemon.ctl("reload", "--json", check=True)
    import json
    assert json.loads(r.stdout) == {"reload": "ok", "restart_needed": ["commit_window"]}
    # Back to the value it runs with: nothing waits any more.
    daemon.configure(server={"commit_window": "0"})
    r = daemon.ctl("reload", check=True)
    assert r.stdout.strip() == "configuration reloaded", r.stdout


# ---------------------------------------------------------------- access

NOBODY = 65534


@pytest.fixture
def public_dir():
    """A directory any local user can reach (pytest's tmp dirs are 0700),
    with a copy of mxspoolctl in it: the build tree may sit under /root."""
    import shutil
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root to run mxspoolctl as another user")
    d = tempfile.mkdtemp(prefix="mxctl-", dir="/tmp")
    os.chmod(d, 0o755)
    shutil.copy2(mxtest.binary("mxspoolctl"), os.path.join(d, "mxspoolctl"))
    os.chmod(os.path.join(d, "mxspoolctl"), 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def ctl_as(uid, gid, public_dir, sock, *args):
    def drop():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXSPOOL")}
    return subprocess.run([os.path.join(public_dir, "mxspoolctl"), "-s", sock] + list(args),
                          capture_output=True, text=True, timeout=30, preexec_fn=drop,
                          env=env)


def start_with_socket(daemon_factory, primary, sock, **server):
    d = daemon_factory(primary=primary, start=False,
                       server=dict(server, control_socket=sock))
    d.control_socket = sock
    d.start()
    return d


def test_control_socket_refuses_other_users(daemon_factory, primary, public_dir):
    """Default: socket 0660; a user who is neither root, the daemon's user
    nor in its group cannot even connect, and hears why (exit 77)."""
    sock = os.path.join(public_dir, "c.sock")
    d = start_with_socket(daemon_factory, primary, sock)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
    r = ctl_as(NOBODY, NOBODY, public_dir, sock, "status")
    assert r.returncode == 77, (r.returncode, r.stderr)
    assert "permission denied" in r.stderr
    assert d.ctl("hold", "demo").returncode == 0   # root may


def test_readonly_any_lets_everybody_look_but_not_touch(daemon_factory, primary, public_dir):
    """control_readonly = any: socket 0666, status/queue/watch for every
    local user, but state-changing commands still checked by SO_PEERCRED."""
    sock = os.path.join(public_dir, "c.sock")
    d = start_with_socket(daemon_factory, primary, sock, control_readonly="any")
    assert oct(os.stat(sock).st_mode & 0o777) == "0o666"
    r = ctl_as(NOBODY, NOBODY, public_dir, sock, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert "tenants" in r.stdout
    assert d.ctl("hold", "demo").returncode == 0      # root queues something to touch
    import smtplib
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=mxtest.scaled(20))
    s.sendmail("a@client.test", ["user@example.test"], "Subject: x\r\n\r\nx\r\n")
    s.quit()
    qid = d.wait_log("accept")[0]["qid"]
    for args in (("hold", "demo"), ("release", "demo"), ("reload",), ("flush",),
                 ("set", "demo", "drain_rate=5"), ("delete", qid), ("bounce", qid),
                 ("delete", "--tenant", "demo"), ("requeue",)):
        r = ctl_as(NOBODY, NOBODY, public_dir, sock, *args)
        assert r.returncode == 77, (args, r.returncode, r.stderr)
        assert "permission denied" in r.stderr, r.stderr
    assert d.tenant_status("demo")["held"] is True    # release was refused too
    d.wait_log("control", command="hold", result="denied")
    # Nothing the refused peer asked for happened: the message is still there.
    r = ctl_as(NOBODY, NOBODY, public_dir, sock, "show", qid)
    assert r.returncode == 0 and qid in r.stdout, (r.returncode, r.stderr)


def test_control_group_members_may_act(daemon_factory, primary, public_dir):
    """control_group = nogroup: the socket belongs to that group, and a peer
    in it (nobody's own group) may run every command."""
    import grp
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no group nogroup")
    sock = os.path.join(public_dir, "c.sock")
    d = start_with_socket(daemon_factory, primary, sock, control_group="nogroup")
    assert os.stat(sock).st_gid == gid
    r = ctl_as(NOBODY, gid, public_dir, sock, "hold", "demo")
    assert r.returncode == 0, r.stderr
    assert d.tenant_status("demo")["held"] is True


def test_unknown_control_group_stops_the_start(daemon_factory, primary):
    d = daemon_factory(primary=primary, start=False,
                       server={"control_group": "no-such-group-mx"})
    with pytest.raises(mxtest.DaemonError) as e:
        d.start()
    assert "control_group no-such-group-mx: no such group" in str(e.value)
