"""pytest fixtures for the mxspool integration tests (see README.md).

primary          a started Primary (aiosmtpd) on a free 127.0.0.1 port
primary_factory  more primaries: primary_factory(tls_cert=None, port=None)
daemon_factory   daemon_factory(start=True, **Daemon kwargs) -> Daemon
daemon           one started daemon whose tenant "demo" (example.test)
                 delivers to the `primary` fixture
dns              dns(records) -> a started DNSServer from dnsserver.py
tls_cert         self-signed cert/key for localhost / 127.0.0.1 / ::1
swaks            swaks(target, *args, timeout=30) -> CompletedProcess
notify_socket    a NOTIFY_SOCKET stand-in (mxtest.NotifySocket)

Every process and listener a fixture starts is stopped at teardown by PID
(or by its own thread), with a bounded wait.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mxtest  # noqa: E402


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item so fixtures can tell, at
    # teardown, whether the test failed (and then show the daemon's log).
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


@pytest.fixture
def primary_factory():
    made = []

    def make(start=True, **kw):
        p = mxtest.Primary(**kw)
        made.append(p)
        if start:
            p.start()
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def primary(primary_factory):
    return primary_factory()


@pytest.fixture
def daemon_factory(tmp_path, request):
    made = []

    def make(start=True, workdir=None, **kw):
        wd = workdir or mxtest.short_dir(tmp_path, "d%d" % (len(made) + 1))
        d = mxtest.Daemon(wd, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    problems = []
    for d in made:
        if _failed(request) and d.proc is not None:
            sys.stdout.write("---- mxspoold log (%s, pid %s) ----\n%s\n"
                             % (d.workdir, d.pid, d.log_tail(200)))
        problems += d.cleanup()
    if problems:
        pytest.fail("daemon teardown: " + "\n".join(problems), pytrace=False)


@pytest.fixture
def daemon(daemon_factory, primary):
    return daemon_factory(primary=primary)


@pytest.fixture
def dns():
    try:
        import dnsserver
    except ModuleNotFoundError as e:
        if e.name != "dnsserver":
            raise
        pytest.skip("tests/integration/dnsserver.py is not there yet")
    servers = []

    def make(records=None, **kw):
        s = dnsserver.DNSServer(records if records is not None else {}, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    return mxtest.make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def swaks():
    if not os.access(mxtest.SWAKS, os.X_OK):
        pytest.skip("swaks is not installed (apt-get install swaks)")
    return mxtest.run_swaks


@pytest.fixture
def notify_socket(tmp_path):
    s = mxtest.NotifySocket(tmp_path)
    yield s
    s.close()
