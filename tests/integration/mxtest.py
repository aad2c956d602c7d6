"""mxtest - the integration harness for mxspool.

Everything a black-box test needs to drive the real binaries over real
sockets, with nothing leaving 127.0.0.1 / ::1:

  free_port()       a TCP port on 127.0.0.1 nobody listens on (distinct per run)
  Daemon            one mxspoold: INI config from dicts, start/stop/reload,
                    mxspoolctl, parsed status and key=value logs
  Primary           a controllable primary MX built on aiosmtpd: records every
                    message, answers 4xx/5xx/421 at any stage, slows down,
                    stops listening and comes back, toggles ESMTP extensions
  NotifySocket      a systemd NOTIFY_SOCKET stand-in that collects sd_notify()
  parse_log_line()  key=value log lines -> dict
  run_swaks()       /usr/bin/swaks against a port, bounded in time

Every wait is bounded.  Times scale by 3 when MXSPOOL_SANITIZED=1 (ASan and
UBSan make the daemon several times slower to start and to stop).
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("MXSPOOL_SRCDIR") or os.path.dirname(os.path.dirname(HERE))
BUILDDIR = os.environ.get("MXSPOOL_BUILDDIR") or os.path.join(SRCDIR, "build")
SANITIZED = os.environ.get("MXSPOOL_SANITIZED") == "1"
TIME_SCALE = 3.0 if SANITIZED else 1.0

START_TIMEOUT = 45.0 if SANITIZED else 15.0
STOP_TIMEOUT = 10.0 * TIME_SCALE
CTL_TIMEOUT = 10.0 * TIME_SCALE

# Reports a sanitizer writes to stderr; any of them fails the test.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: AddressSanitizer")

# A unix socket path must fit in sun_path (108 bytes with the NUL).
SUN_PATH_MAX = 100


def scaled(seconds):
    """SECONDS stretched for sanitizer builds."""
    return seconds * TIME_SCALE


def binary(name):
    """Path of a built program; an AssertionError says where it was expected."""
    path = os.path.join(BUILDDIR, name)
    assert os.access(path, os.X_OK), (
        "%s is not built at %s (set MXSPOOL_BUILDDIR to the build folder)"
        % (name, path))
    return path


# ---------------------------------------------------------------- ports

_ports_given = set()
_ports_lock = threading.Lock()


def free_port(host="127.0.0.1"):
    """A TCP port that was free on HOST a moment ago, never the same twice.

    Binding port 0 lets the kernel choose; the socket is closed at once, so
    there is a small window in which someone else could take it.  Ports are
    remembered so that two calls in one test run never hand out the same one
    (the kernel may otherwise offer a port again as soon as it is closed).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with _ports_lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found in 200 tries")


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll PREDICATE until it returns a true value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


def short_dir(base, name):
    """A fresh directory for NAME under BASE, or under /tmp when BASE is so
    deep that a socket inside it would not fit in sun_path."""
    path = os.path.join(str(base), name)
    if len(path) + len("/control.sock") > SUN_PATH_MAX:
        return tempfile.mkdtemp(prefix="mxs-%s-" % name[:8])
    os.makedirs(path, exist_ok=True)
    return path


# ---------------------------------------------------------------- logs

_KV_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def _unquote(v):
    if not v.startswith('"'):
        return v
    body = v[1:-1]
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            if n == "x" and i + 3 < len(body) + 0 and re.match(
                    r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
                out.append(chr(int(body[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append(n)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_log_line(line):
    """The key=value pairs of one log line as a dict (quotes and \\", \\\\,
    \\xNN escapes undone).  Text without '=' (the timestamp and program
    prefix) is ignored; the raw line is kept under '_line'."""
    d = {"_line": line.rstrip("\n")}
    for m in _KV_RE.finditer(line):
        d[m.group(1)] = _unquote(m.group(2))
    return d


def match_fields(fields, event=None, **kv):
    """Does a parsed line match?  EVENT and each value may be a string
    (equality), a compiled regex (search) or a callable (predicate)."""
    want = dict(kv)
    if event is not None:
        want["event"] = event
    for k, expected in want.items():
        if k not in fields:
            return False
        v = fields[k]
        if callable(expected) and not isinstance(expected, re.Pattern):
            if not expected(v):
                return False
        elif isinstance(expected, re.Pattern):
            if not expected.search(v):
                return False
        elif v != str(expected):
            return False
    return True


# ---------------------------------------------------------------- config

def _ini_value(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def render_ini(sections):
    """INI text from an ordered mapping {section: {key: value}}.

    Lists become comma-separated values; a value of None leaves the key out
    (to test a missing key).  A section mapped to None is left out whole.
    """
    out = []
    for name, keys in sections.items():
        if keys is None:
            continue
        out.append("[%s]" % name)
        for k, v in keys.items():
            if v is None:
                continue
            out.append("%s = %s" % (k, _ini_value(v)))
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- daemon

class DaemonError(AssertionError):
    pass


class Daemon:
    """One mxspoold under test.

    The config is built from dicts: SERVER and TLS override keys of
    [server] and [tls]; TENANTS maps a tenant name to its keys (default: one
    tenant "demo" for example.test whose primary is PRIMARY, or a dead port).
    RAW is appended to the file as is.  The [server] defaults put the spool,
    the control socket and the log in WORKDIR, listen on a free 127.0.0.1
    port, serve metrics on another, and point dns_servers at DNS (an object
    with .port) or at a port nobody answers on, so that no query ever
    leaves the machine.
    """

    def __init__(self, workdir, server=None, tls=None, tenants=None, raw="",
                 primary=None, dns=None, env=None, args=()):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.smtp_port = free_port()
        self.metrics_port = free_port()
        self.dead_port = free_port()
        self.spool_dir = os.path.join(self.workdir, "spool")
        self.control_socket = os.path.join(self.workdir, "control.sock")
        self.config_path = os.path.join(self.workdir, "mxspool.ini")
        self.log_path = os.path.join(self.workdir, "mxspoold.log")
        self.primary = primary
        self.dns = dns
        self.env = dict(env or {})
        self.args = list(args)
        self.proc = None
        self.returncode = None
        self.killed = False
        self._logf = None
        self.server = self.default_server()
        self.server.update(server or {})
        self.tls = dict(tls) if tls else None
        self.tenants = tenants if tenants is not None else self.default_tenants()
        self.raw = raw
        self.write_config()

    # -- config

    def default_server(self):
        if self.dns is not None:
            dns_servers = getattr(self.dns, "address", None) or "127.0.0.1:%d" % self.dns.port
        else:
            dns_servers = "127.0.0.1:%d" % self.dead_port
        return {
            "hostname": "mx.test",
            "listen": "127.0.0.1:%d" % self.smtp_port,
            "spool_dir": self.spool_dir,
            "control_socket": self.control_socket,
            "metrics_listen": "127.0.0.1:%d" % self.metrics_port,
            "dns_servers": dns_servers,
        }

    def primary_hostport(self):
        port = self.primary.port if self.primary is not None else self.dead_port
        return "127.0.0.1:%d" % port

    def default_tenants(self):
        return {"demo": {"domains": ["example.test"],
                         "primary": self.primary_hostport()}}

    def sections(self):
        s = {"server": self.server}
        if self.tls:
            s["tls"] = self.tls
        for name, keys in self.tenants.items():
            s["tenant:%s" % name] = keys
        return s

    def config_text(self):
        text = render_ini(self.sections())
        if self.raw:
            text += "\n" + self.raw.rstrip("\n") + "\n"
        return text

    def write_config(self, text=None):
        """Write the config file (from the dicts, or TEXT verbatim)."""
        data = self.config_text() if text is None else text
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, self.config_path)
        return self.config_path

    def configure(self, server=None, tls=None, tenants=None, raw=None):
        """Change the config dicts and rewrite the file (no reload)."""
        if server:
            self.server.update(server)
        if tls is not None:
            self.tls = dict(tls) if tls else None
        if tenants is not None:
            self.tenants = tenants
        if raw is not None:
            self.raw = raw
        return self.write_config()

    def check_config(self, path=None, timeout=None):
        """mxspoold -c FILE -t."""
        return subprocess.run([binary("mxspoold"), "-c", path or self.config_path, "-t"],
                              capture_output=True, text=True,
                              timeout=timeout or CTL_TIMEOUT, env=self._env())

    # -- process

    def _env(self):
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("JOURNAL_STREAM", None)
        env.update(self.env)
        return env

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait=True, timeout=None):
        """Start mxspoold -c FILE; with WAIT, return once status answers."""
        assert not self.running, "daemon already running (pid %d)" % self.pid
        self._close_log()
        self._logf = open(self.log_path, "ab")
        self.returncode = None
        self.killed = False
        self.proc = subprocess.Popen(
            [binary("mxspoold"), "-c", self.config_path] + self.args,
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf,
            env=self._env(), cwd=self.workdir)
        if wait:
            return self.wait_ready(timeout)
        return None

    def wait_ready(self, timeout=None):
        """Wait until `mxspoolctl status --json` answers; return the status."""
        timeout = timeout or START_TIMEOUT
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not self.running:
                self._reap()
                raise DaemonError("mxspoold exited with %s before it was ready; log:\n%s"
                                  % (self.returncode, self.log_tail()))
            try:
                r = self.ctl("status", "--json", timeout=min(5.0, timeout))
                if r.returncode == 0:
                    try:
                        return json.loads(r.stdout)
                    except ValueError:
                        last = "status --json is not JSON: %r" % r.stdout[:200]
                else:
                    last = (r.stdout + r.stderr).strip()[:200]
            except subprocess.TimeoutExpired:
                last = "mxspoolctl timed out"
            if time.monotonic() >= deadline:
                raise DaemonError("mxspoold not ready after %.0fs (%s); log:\n%s"
                                  % (timeout, last, self.log_tail()))
            time.sleep(0.05)

    def signal(self, sig):
        assert self.running, "daemon is not running"
        os.kill(self.proc.pid, sig)

    def reload(self):
        """SIGHUP (re-read the config file)."""
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout=None):
        """Wait for the process to end by itself; its exit code, or None."""
        try:
            self.proc.wait(timeout=timeout or STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None
        self._reap()
        return self.returncode

    def stop(self, timeout=None):
        """SIGTERM and a bounded wait; returns the exit code.  If the daemon
        does not exit in time it is killed and DaemonError raised."""
        if self.proc is None:
            return None
        if not self.running:
            self._reap()
            return self.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill9()
            raise DaemonError("mxspoold did not exit within %.0fs of SIGTERM; killed. log:\n%s"
                              % (timeout or STOP_TIMEOUT, self.log_tail()))
        return rc

    def kill9(self):
        """SIGKILL (a crash, as far as the spool is concerned)."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.killed = True
            self.proc.wait(timeout=10)
        self._reap()
        return self.returncode

    def restart(self, wait=True):
        """SIGTERM (bounded) then start again on the same config and spool."""
        self.stop()
        return self.start(wait=wait)

    def _reap(self):
        if self.proc is not None and self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            self._close_log()

    def _close_log(self):
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def cleanup(self):
        """Teardown: stop the process by PID; return a list of problems."""
        problems = []
        if self.running:
            try:
                rc = self.stop()
                if rc != 0:
                    problems.append("mxspoold exited %s on SIGTERM at teardown; log:\n%s"
                                    % (rc, self.log_tail()))
            except DaemonError as e:
                problems.append(str(e))
        elif self.proc is not None:
            self._reap()
            rc = self.returncode
            if rc is not None and rc < 0 and not self.killed:
                problems.append("mxspoold died of signal %d during the test; log:\n%s"
                                % (-rc, self.log_tail()))
        self._close_log()
        if self.running:  # pragma: no cover - stop() kills
            self.kill9()
        marks = self.sanitizer_reports()
        if marks:
            problems.append("sanitizer report in the daemon log:\n" + marks)
        return problems

    def sanitizer_reports(self):
        text = self.log()
        hits = [l for l in text.splitlines() if any(m in l for m in SANITIZER_MARKS)]
        return "\n".join(hits[:20])

    # -- mxspoolctl

    def ctl(self, *args, use_config=False, timeout=None, check=False):
        """Run mxspoolctl -s SOCKET ARGS (or -c FILE with USE_CONFIG)."""
        where = ["-c", self.config_path] if use_config else ["-s", self.control_socket]
        r = subprocess.run([binary("mxspoolctl")] + where + [str(a) for a in args],
                           capture_output=True, text=True,
                           timeout=timeout or CTL_TIMEOUT, env=self._env())
        if check and r.returncode != 0:
            raise DaemonError("mxspoolctl %s exited %d: %s%s"
                              % (" ".join(map(str, args)), r.returncode, r.stdout, r.stderr))
        return r

    def status(self):
        """`mxspoolctl status --json`, parsed."""
        r = self.ctl("status", "--json", check=True)
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            raise DaemonError("status --json is not JSON (%s): %r" % (e, r.stdout[:500]))

    def tenant_status(self, name):
        for t in self.status()["tenants"]:
            if t.get("name") == name:
                return t
        raise DaemonError("tenant %r not in status" % name)

    def metrics(self, timeout=5.0):
        """GET /metrics from metrics_listen; the body as text."""
        with socket.create_connection(("127.0.0.1", self.metrics_port),
                                      timeout=scaled(timeout)) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        raw = b"".join(chunks).decode("utf-8", "replace")
        head, _, body = raw.partition("\r\n\r\n")
        assert head.split(" ")[1:2] == ["200"], "metrics answered: %r" % head[:200]
        return body

    # -- logs

    def log(self):
        """Everything the daemon wrote to stdout/stderr so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log().splitlines()[-n:])

    def mark(self):
        """A position in the log; pass it as after= to see only newer lines."""
        return len(self.log().splitlines())

    def log_lines(self, event=None, after=0, **kv):
        """Parsed key=value lines (dicts), optionally only those matching
        EVENT and KV (strings, regexes or predicates) after line AFTER."""
        lines = self.log().splitlines()[after:]
        out = []
        for line in lines:
            if "=" not in line:
                continue
            f = parse_log_line(line)
            if match_fields(f, event, **kv):
                out.append(f)
        return out

    def wait_log(self, event=None, timeout=10.0, after=0, count=1, **kv):
        """Wait (bounded, scaled) until COUNT matching lines exist; return them."""
        t = scaled(timeout)
        deadline = time.monotonic() + t
        while True:
            found = self.log_lines(event, after=after, **kv)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise DaemonError("no log line event=%s %s within %.1fs; log:\n%s"
                                  % (event, kv, t, self.log_tail()))
            if not self.running and self.proc is not None:
                # Give the last lines a chance, then give up early.
                found = self.log_lines(event, after=after, **kv)
                if len(found) >= count:
                    return found
                raise DaemonError("daemon exited (%s) while waiting for event=%s %s; log:\n%s"
                                  % (self.proc.returncode, event, kv, self.log_tail()))
            time.sleep(0.05)


# ---------------------------------------------------------------- sd_notify

class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory):
        d = short_dir(directory, "notify")
        self.path = os.path.join(d, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages = []      # one list of "KEY=VALUE" strings per datagram

    def poll(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return
            except BlockingIOError:
                return
            self.messages.append([l for l in data.decode("utf-8", "replace").split("\n") if l])

    def assignments(self):
        """All KEY=VALUE lines received so far, in order."""
        self.poll()
        return [a for m in self.messages for a in m]

    def wait_for(self, assignment, timeout=10.0, after=0):
        """Wait until ASSIGNMENT (e.g. "READY=1") arrives at index >= AFTER of
        assignments(); return its index."""
        t = scaled(timeout)
        deadline = time.monotonic() + t
        while True:
            got = self.assignments()
            for i in range(after, len(got)):
                if got[i] == assignment:
                    return i
            if time.monotonic() >= deadline:
                raise AssertionError("no %s from sd_notify within %.1fs; got %r"
                                     % (assignment, t, got))
            time.sleep(0.02)

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- primary

class Message:
    """One message the primary accepted."""

    def __init__(self, mail_from, rcpt_tos, data, conn_index, seq, tls,
                 mail_options, rcpt_options, dsn_mail, dsn_rcpt, peer):
        self.mail_from = mail_from        # "" for the null sender
        self.rcpt_tos = rcpt_tos
        self.data = data                  # raw bytes, dot-unstuffed, CRLF kept
        self.arrived = time.monotonic()
        self.arrived_wall = time.time()
        self.conn_index = conn_index      # which connection (1, 2, ...)
        self.seq = seq                    # n-th message on that connection
        self.tls = tls
        self.mail_options = mail_options
        self.rcpt_options = rcpt_options
        self.dsn_mail = dsn_mail          # {"RET": ..., "ENVID": ...}
        self.dsn_rcpt = dsn_rcpt          # per recipient {"NOTIFY": ..., "ORCPT": ...}
        self.peer = peer

    def header(self, name):
        """First header NAME (case-insensitive) of the message, or None."""
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        unfolded = re.sub(r"\r\n[ \t]", " ", head)
        for line in unfolded.split("\r\n"):
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None

    def __repr__(self):
        return "<Message conn=%d seq=%d from=%r to=%r %d bytes>" % (
            self.conn_index, self.seq, self.mail_from, self.rcpt_tos, len(self.data))


class Connection:
    """One SMTP connection the primary saw: its commands in order."""

    def __init__(self, index, peer):
        self.index = index
        self.peer = peer
        self.opened = time.monotonic()
        self.closed = None
        self.commands = []    # (verb, argument) as received
        self.messages = 0

    def verbs(self):
        return [c[0] for c in self.commands]


# The extensions a Primary offers, in the order they appear in its EHLO.
EXTENSION_ORDER = ("SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "DSN",
                   "ENHANCEDSTATUSCODES", "STARTTLS")
DEFAULT_EXTENSIONS = {"SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "DSN", "STARTTLS"}
STAGES = ("CONNECT", "EHLO", "MAIL", "RCPT", "DATA_CMD", "DATA")

_DEFAULT_TEXT = {
    421: "4.3.2 Service shutting down, closing connection",
    450: "4.2.0 Mailbox busy, try later",
    451: "4.3.0 Temporary failure, try later",
    452: "4.2.2 Insufficient storage",
    550: "5.1.1 Mailbox unavailable",
    552: "5.3.4 Message too big",
    554: "5.7.1 Transaction failed",
}


def _split_dsn(arg, names):
    """Take DSN parameters NAMES out of a MAIL/RCPT argument, which aiosmtpd
    1.4 would otherwise refuse; return (rest, {NAME: value})."""
    close = arg.rfind(">")
    head, tail = (arg[:close + 1], arg[close + 1:]) if close >= 0 else (arg, "")
    kept, dsn = [], {}
    for tok in tail.split():
        k, eq, v = tok.partition("=")
        if eq and k.upper() in names:
            dsn[k.upper()] = v
        else:
            kept.append(tok)
    return " ".join([head] + kept), dsn


class _PrimarySMTP(SMTP):
    """aiosmtpd's SMTP with the hooks the Primary needs: counting
    connections, a configurable banner, slow and closing replies, the
    DATA command's own reply, DSN parameters and a per-connection log."""

    def __init__(self, primary, handler, **kw):
        self.primary = primary
        self._conn = None
        self._mid_reply = False
        self._rcpt_dsn = {}
        super().__init__(handler, **kw)
        for verb, method in list(self._smtp_methods.items()):
            self._smtp_methods[verb] = self._recorder(verb, method)

    def _recorder(self, verb, method):
        async def run(arg):
            if self._conn is not None:
                self._conn.commands.append((verb, arg))
            return await method(arg)
        # HELP lists the commands that carry aiosmtpd's @syntax attributes.
        for attr in ("__smtp_syntax__", "__smtp_syntax_extended__",
                     "__smtp_syntax_when__"):
            if hasattr(method, attr):
                setattr(run, attr, getattr(method, attr))
        return run

    async def _handle_client(self):
        p = self.primary
        peer = self.session.peer
        if peer and peer[1] in p._ignored_ports:
            # The Controller's own start-up probe: not a client.
            self.transport.close()
            return
        self._conn = p._conn_opened(peer)
        try:
            banner = p._take_reply("CONNECT")
            if banner is not None:
                await self.push(banner)
                if self.transport is not None:
                    self.transport.close()
                return
            await super()._handle_client()
        finally:
            p._conn_closed(self._conn)

    async def push(self, status):
        p = self.primary
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if p.delay_ms and not self._mid_reply:
            await asyncio.sleep(p.delay_ms / 1000.0)
        self._mid_reply = len(text) > 3 and text[3] == "-"
        if self.transport is None:
            return
        await super().push(status)
        if text.startswith("421") and not self._mid_reply and self.transport is not None:
            self.transport.close()

    async def smtp_MAIL(self, arg):
        if arg and "DSN" in self.primary.extensions:
            arg, dsn = _split_dsn(arg, ("RET", "ENVID"))
            self.envelope.dsn_mail = dsn
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg):
        self._rcpt_dsn = {}
        if arg and "DSN" in self.primary.extensions:
            arg, self._rcpt_dsn = _split_dsn(arg, ("NOTIFY", "ORCPT"))
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg):
        if (not arg and self.session.host_name and self.envelope.mail_from
                and self.envelope.rcpt_tos):
            r = self.primary._take_reply("DATA_CMD")
            if r is not None:
                await self.push(r)
                return
        await super().smtp_DATA(arg)


class _PrimaryHandler:
    def __init__(self, primary):
        self.p = primary

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        r = self.p._take_reply("EHLO")
        if r is not None:
            return [r]
        session.host_name = hostname
        ext = self.p.extensions
        lines = [self.p.hostname]
        for name in EXTENSION_ORDER:
            if name not in ext:
                continue
            if name == "SIZE":
                lines.append("SIZE %d" % self.p.size_limit)
            elif name == "STARTTLS":
                if server.tls_context is not None and session.ssl is None:
                    lines.append("STARTTLS")
            else:
                lines.append(name)
        return ["250-" + l for l in lines[:-1]] + ["250 " + lines[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        r = self.p._take_reply("MAIL")
        if r is not None:
            return r
        ext = self.p.extensions
        if "SMTPUTF8" in mail_options and "SMTPUTF8" not in ext:
            return "555 5.5.4 SMTPUTF8 not offered"
        if "BODY=8BITMIME" in mail_options and "8BITMIME" not in ext:
            return "555 5.5.4 8BITMIME not offered"
        if not hasattr(envelope, "dsn_mail"):
            envelope.dsn_mail = {}
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        per = self.p.rcpt_replies.get(address.lower())
        if per is not None:
            return self.p._format(per)
        r = self.p._take_reply("RCPT")
        if r is not None:
            return r
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if not hasattr(envelope, "dsn_rcpt"):
            envelope.dsn_rcpt = []
        envelope.dsn_rcpt.append(server._rcpt_dsn)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        r = self.p._take_reply("DATA")
        if r is not None:
            self.p._note_refused(envelope, r)
            return r
        n = self.p._record(server, session, envelope)
        return "250 2.0.0 OK queued as P%d" % n


class _PrimaryController(Controller):
    def __init__(self, primary, **kw):
        self.primary = primary
        super().__init__(_PrimaryHandler(primary), **kw)

    def factory(self):
        return _PrimarySMTP(self.primary, self.handler, loop=self.loop,
                            **self.SMTP_kwargs)

    def _trigger_server(self):
        # aiosmtpd instantiates the protocol on the first connection only,
        # so the Controller connects once itself.  Bind first so the server
        # can recognise that connection and keep it out of the counts.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.primary._ignored_ports.add(s.getsockname()[1])
            s.settimeout(2.0)
            s.connect((self.hostname, self.port))


class Primary:
    """A primary MX for the daemon to deliver to, on 127.0.0.1:PORT.

    Modes, settable at any time from the test thread:
      accept()                         everything back to normal
      reply_at(stage, code, text=None, times=None)
          answer CODE at STAGE: "CONNECT" (the banner), "EHLO", "MAIL",
          "RCPT", "DATA_CMD" (the DATA command, before 354) or "DATA" (the
          reply after the message, which is then not recorded).  TIMES
          limits how often (None = until accept()/clear()).  Any 421 reply
          closes the connection after it is sent.
      reply_for(address, code)         one recipient always gets CODE at RCPT
      delay_ms = N / slow(ms)          wait N ms before each reply (banner too)
      refuse() / come_back()           stop listening / listen again, same port
      extensions                       set of offered ESMTP extensions;
                                       disable("SMTPUTF8"), enable(...)
    Records: messages (Message), connections (Connection), total
    connections, current and max_concurrent; wait_for(n, timeout).
    """

    def __init__(self, port=None, hostname="primary.test", tls_cert=None,
                 size_limit=33554432):
        self.port = port or free_port()
        self.hostname = hostname
        self.size_limit = size_limit
        self.extensions = set(DEFAULT_EXTENSIONS)
        self.delay_ms = 0
        self.rcpt_replies = {}
        self._replies = {}
        self._lock = threading.Condition()
        self._ignored_ports = set()
        self.messages = []
        self.refused = []           # (envelope summary, reply) at DATA
        self.connections = []
        self.current = 0
        self.max_concurrent = 0
        self._tls = None
        if tls_cert is not None:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_cert.cert, tls_cert.key)
            self._tls = ctx
        self._controller = None

    # -- lifecycle

    def start(self):
        assert self._controller is None, "primary already listening"
        kw = dict(hostname="127.0.0.1", port=self.port, server_hostname=self.hostname,
                  ready_timeout=10.0, data_size_limit=self.size_limit,
                  enable_SMTPUTF8=True, timeout=scaled(60))
        if self._tls is not None:
            kw["tls_context"] = self._tls
        c = _PrimaryController(self, **kw)
        with self._lock:
            self.current = 0    # connections of a previous life are gone
        c.start()
        self._controller = c
        return self

    def stop(self):
        c, self._controller = self._controller, None
        if c is not None:
            c.stop()

    def refuse(self):
        """Stop listening: new connections are refused, open ones dropped."""
        self.stop()

    def come_back(self):
        """Listen again on the same port."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except OSError:
                # The port can be briefly in use (another socket took it).
                self._controller = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    resume = come_back

    @property
    def listening(self):
        return self._controller is not None

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port

    # -- modes

    @staticmethod
    def _format(code, text=None):
        if isinstance(code, str):
            return code
        return "%d %s" % (code, text or _DEFAULT_TEXT.get(code, "%d.0.0 As you wish" % (code // 100)))

    def accept(self):
        with self._lock:
            self._replies.clear()
            self.rcpt_replies.clear()
            self.delay_ms = 0

    def reply_at(self, stage, code, text=None, times=None):
        stage = stage.upper()
        assert stage in STAGES, "stage must be one of %s" % (STAGES,)
        with self._lock:
            if code is None:
                self._replies.pop(stage, None)
            else:
                self._replies[stage] = [self._format(code, text), times]

    def clear(self, stage):
        self.reply_at(stage, None)

    def reply_for(self, address, code, text=None):
        self.rcpt_replies[address.lower()] = self._format(code, text)

    def slow(self, ms):
        self.delay_ms = ms

    def disable(self, *names):
        for n in names:
            self.extensions.discard(n.upper())

    def enable(self, *names):
        for n in names:
            self.extensions.add(n.upper())

    def _take_reply(self, stage):
        with self._lock:
            r = self._replies.get(stage)
            if r is None:
                return None
            text, times = r
            if times is not None:
                if times <= 1:
                    del self._replies[stage]
                else:
                    r[1] = times - 1
            return text

    # -- records

    def _conn_opened(self, peer):
        with self._lock:
            c = Connection(len(self.connections) + 1, peer)
            self.connections.append(c)
            self.current += 1
            self.max_concurrent = max(self.max_concurrent, self.current)
            self._lock.notify_all()
            return c

    def _conn_closed(self, conn):
        with self._lock:
            conn.closed = time.monotonic()
            self.current -= 1
            self._lock.notify_all()

    def _record(self, server, session, envelope):
        conn = server._conn
        with self._lock:
            conn.messages += 1
            mail_from = envelope.mail_from
            m = Message("" if mail_from == "<>" else mail_from, list(envelope.rcpt_tos),
                        bytes(envelope.original_content or b""), conn.index,
                        conn.messages, session.ssl is not None,
                        list(envelope.mail_options), list(envelope.rcpt_options),
                        dict(getattr(envelope, "dsn_mail", {})),
                        list(getattr(envelope, "dsn_rcpt", [])), session.peer)
            self.messages.append(m)
            self._lock.notify_all()
            return len(self.messages)

    def _note_refused(self, envelope, reply):
        with self._lock:
            self.refused.append(((envelope.mail_from, list(envelope.rcpt_tos)), reply))

    @property
    def total_connections(self):
        return len(self.connections)

    def reset_counters(self):
        with self._lock:
            self.messages.clear()
            self.refused.clear()
            self.connections.clear()
            self.max_concurrent = self.current

    def wait_for(self, n, timeout=10.0):
        """Wait (bounded, scaled) until N messages were received; return them."""
        t = scaled(timeout)
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.messages) >= n, timeout=t)
            got = list(self.messages)
        if not ok:
            raise AssertionError("primary got %d of %d messages within %.1fs"
                                 % (len(got), n, t))
        return got

    def wait_connections(self, n, timeout=10.0):
        """Wait until N connections were made in total; return them."""
        t = scaled(timeout)
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.connections) >= n, timeout=t)
            got = list(self.connections)
        if not ok:
            raise AssertionError("primary saw %d of %d connections within %.1fs"
                                 % (len(got), n, t))
        return got


# ---------------------------------------------------------------- tools

class Cert:
    def __init__(self, cert, key):
        self.cert = cert
        self.key = key


def make_cert(directory, cn="localhost"):
    """A self-signed EC certificate for localhost / 127.0.0.1 / ::1."""
    cert = os.path.join(str(directory), "cert.pem")
    key = os.path.join(str(directory), "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "3", "-subj", "/CN=%s" % cn,
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                    "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=30)
    return Cert(cert, key)


SWAKS = "/usr/bin/swaks"


def run_swaks(target, *args, timeout=30.0):
    """Run swaks against TARGET (a Daemon, a port, or "host:port") and return
    the CompletedProcess (stdout holds swaks' whole transcript, stderr merged).
    --server, --helo, --from and --to get defaults unless ARGS give them."""
    if isinstance(target, Daemon):
        server = "127.0.0.1:%d" % target.smtp_port
    elif isinstance(target, int):
        server = "127.0.0.1:%d" % target
    else:
        server = str(target)
    args = [str(a) for a in args]
    given = set(a for a in args if a.startswith("-"))
    cmd = [SWAKS]
    if not given & {"-s", "--server"}:
        cmd += ["--server", server]
    if not given & {"--helo", "--ehlo", "--lhlo", "-h"}:
        cmd += ["--helo", "client.test"]
    if not given & {"-f", "--from"}:
        cmd += ["--from", "sender@client.test"]
    if not given & {"-t", "--to"}:
        cmd += ["--to", "user@example.test"]
    if "--timeout" not in given:
        cmd += ["--timeout", "%ds" % int(scaled(10))]
    cmd += args
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=scaled(timeout),
                          stdin=subprocess.DEVNULL)


def rss_kib(pid):
    """Resident set size of process PID in KiB (/proc/PID/status VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def rmtree_quiet(path):
    shutil.rmtree(path, ignore_errors=True)
