"""recipients = learn: a backup MX that learns the partner's users from the
primary while it is up, and answers from what it learned while it is down.

The primary is a real aiosmtpd server (mxtest.Primary) that knows a few
users and refuses every other address at RCPT with 550 5.1.1, as a real
mailbox server does.  Every RCPT it sees is counted: that is how the tests
see the verifier's probes.
"""

import json
import os
import smtplib
import socket
import threading
import time

import pytest

import mxtest

USERS = {"alice@example.test", "bob@example.test", "dave@example.test"}


class UserTable(dict):
    """Primary.rcpt_replies that refuses every address but USERS."""

    def __init__(self, users):
        super().__init__()
        self.users = set(users)

    def get(self, address, default=None):
        if address.lower() in self.users:
            return None
        return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address


def rcpt_count(primary):
    """RCPT commands the primary received, every connection together."""
    return sum(v == "RCPT" for c in list(primary.connections) for v in c.verbs())


def make_primary(primary_factory):
    p = primary_factory()
    p.rcpt_replies = UserTable(USERS)
    return p


def learn_tenant(d_primary, **extra):
    keys = {
        "domains": ["example.test"],
        "primary": d_primary.hostport,
        "recipients": "learn",
        "probe_interval": "1s",
        "probe_up_after": "1",
        # No ramp: the probe rate is verify_rate, not the drain's start.
        "drain_initial_rate": "50",
        "drain_rate": "50",
    }
    keys.update(extra)
    return {"demo": keys}


def wait_state(d, state, timeout=20.0):
    mxtest.wait_until(lambda: d.tenant_status("demo")["primary_state"] == state,
                      mxtest.scaled(timeout), what="primary %s" % state)


def rcpt_replies(d, addrs, timeout=30.0):
    """One SMTP session: MAIL, then RCPT for each of ADDRS; the replies as
    (code, text) in order."""
    out = []
    with smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=mxtest.scaled(timeout)) as s:
        s.ehlo("client.test")
        code, _ = s.mail("sender@client.test")
        assert code == 250
        for a in addrs:
            code, text = s.rcpt(a)
            out.append((code, text.decode("utf-8", "replace")))
        s.rset()
    return out


def cached(d):
    r = d.ctl("recipients", "demo", "--json", check=True)
    doc = json.loads(r.stdout)
    return {e["address"]: e["state"] for e in doc["recipients"]}


def test_learn_then_answer_from_cache_while_down_and_after_restart(
        primary_factory, daemon_factory):
    """While the primary is up an unknown address is verified live and the
    answer kept; once it is down the cache answers 250 / 550 and the rest
    450 (or 250 with unknown_recipient = accept); a restart keeps the cache,
    and forget drops one address."""
    p = make_primary(primary_factory)
    d = daemon_factory(tenants=learn_tenant(p, verify_timeout="3s"), primary=p)
    wait_state(d, "up")

    before = rcpt_count(p)
    got = rcpt_replies(d, ["alice@example.test", "nobody@example.test"])
    assert got[0][0] == 250, got
    assert got[1][0] == 550 and "5.1.1" in got[1][1], got
    assert rcpt_count(p) - before == 2       # one probe each
    assert cached(d) == {"alice@example.test": "valid",
                         "nobody@example.test": "invalid"}
    assert d.tenant_status("demo")["recipients_cached"] == 2
    assert 'mxspool_recipients_cached{tenant="demo"} 2' in d.metrics()
    d.wait_log("verify", result="invalid", rcpt="<nobody@example.test>")

    # A second RCPT for a known address is answered from the cache.
    before = rcpt_count(p)
    got = rcpt_replies(d, ["alice@example.test", "NOBODY@example.test"])
    assert [c for c, _ in got] == [250, 550]
    assert rcpt_count(p) == before

    # The primary goes away; a message for alice (cached valid) is taken,
    # and its delivery attempt finds the primary down.
    p.refuse()
    with smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=mxtest.scaled(30)) as s:
        s.sendmail("sender@client.test", ["alice@example.test"],
                   b"Subject: t\r\n\r\nwhile the primary is away\r\n")
    wait_state(d, "down")

    got = rcpt_replies(d, ["alice@example.test", "nobody@example.test",
                           "carol@example.test"])
    assert got[0][0] == 250, got
    assert got[1][0] == 550 and "5.1.1" in got[1][1], got
    assert got[2][0] == 450 and "4.1.1" in got[2][1], got

    # unknown_recipient = accept: the not-yet-learned address is taken.
    d.configure(tenants=learn_tenant(p, verify_timeout="3s",
                                     unknown_recipient="accept"))
    m = d.mark()
    d.reload()
    d.wait_log("reload", after=m, result="ok")
    got = rcpt_replies(d, ["carol@example.test", "nobody@example.test"])
    assert [c for c, _ in got] == [250, 550], got

    # A restart (primary still down) keeps what was learned.
    d.configure(tenants=learn_tenant(p, verify_timeout="3s"))
    d.restart()
    mxtest.wait_until(lambda: d.tenant_status("demo")["recipients_cached"] == 2,
                      mxtest.scaled(10), what="cache loaded")
    got = rcpt_replies(d, ["alice@example.test", "nobody@example.test",
                           "carol@example.test"])
    assert [c for c, _ in got] == [250, 550, 450], got

    # forget: alice is not known any more, so (primary down) 450.
    r = d.ctl("forget", "demo", "alice@example.test")
    assert r.returncode == 0, r.stderr
    assert "alice@example.test" in r.stdout
    assert d.ctl("forget", "demo", "alice@example.test").returncode != 0
    assert cached(d) == {"nobody@example.test": "invalid"}
    got = rcpt_replies(d, ["alice@example.test"])
    assert got[0][0] == 450, got


def test_file_wins_and_delivered_recipients_are_learned(
        primary_factory, daemon_factory, tmp_path):
    """learn+FILE: an address the FILE lists is taken without a probe, even
    one the primary refuses; every recipient the drain delivers is learned
    as valid."""
    p = make_primary(primary_factory)
    users = tmp_path / "users"
    users.write_text("dave@example.test\nlisted@example.test\n")
    d = daemon_factory(tenants=learn_tenant(p, recipients="learn+%s" % users),
                       primary=p)
    wait_state(d, "up")
    before = rcpt_count(p)
    got = rcpt_replies(d, ["listed@example.test"])
    assert got[0][0] == 250, got             # the FILE wins over the primary
    assert rcpt_count(p) == before           # and nobody asked it
    assert cached(d) == {}

    with smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=mxtest.scaled(30)) as s:
        s.sendmail("sender@client.test", ["dave@example.test"],
                   b"Subject: t\r\n\r\nfor dave\r\n")
    p.wait_for(1, mxtest.scaled(20))
    mxtest.wait_until(lambda: cached(d).get("dave@example.test") == "valid",
                      mxtest.scaled(10), what="dave learned from the delivery")
    assert rcpt_count(p) == before + 1       # the delivery's RCPT only


def _attack_session(port, addrs, replies, errors):
    """One client: MAIL, then the RCPTs one by one (each waits for its
    answer), recorded as codes."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=mxtest.scaled(60)) as s:
            s.ehlo("attacker.test")
            s.mail("spammer@attacker.test")
            for a in addrs:
                code, _ = s.rcpt(a)
                replies.append(code)
            s.rset()
    except Exception as e:  # reported by the test
        errors.append(repr(e))


def test_dictionary_attack_probes_are_bounded(primary_factory, daemon_factory):
    """1000 distinct unknown recipients from 40 parallel clients: the
    primary sees at most verify_rate RCPT probes a second (plus one
    second's burst), never a 250 for an unknown user, and every RCPT is
    answered (550 from a probe, 450 when no probe could be made in time)."""
    p = make_primary(primary_factory)
    rate = 5
    d = daemon_factory(
        server={"max_errors": "100000"},
        tenants=learn_tenant(p, verify_rate=str(rate), verify_concurrency="2",
                             verify_timeout="200ms"),
        primary=p)
    wait_state(d, "up")
    addrs = ["guess%04d@example.test" % i for i in range(1000)]
    nclients = 40
    replies, errors, threads = [], [], []
    before = rcpt_count(p)
    t0 = time.monotonic()
    for k in range(nclients):
        th = threading.Thread(target=_attack_session,
                              args=(d.smtp_port, addrs[k::nclients], replies, errors))
        th.start()
        threads.append(th)
    for th in threads:
        th.join(mxtest.scaled(120))
    elapsed = time.monotonic() - t0
    assert not errors, errors[:3]
    assert len(replies) == 1000
    probes = rcpt_count(p) - before
    assert 250 not in replies
    assert set(replies) <= {450, 550}
    assert replies.count(550) <= probes      # a 550 only from a probe
    assert probes >= 1
    # The bound: the bucket's depth (one second) plus the rate over the
    # time the attack lasted, with one extra second for tick granularity.
    bound = rate * (elapsed + 2)
    assert probes <= bound, (probes, elapsed, bound)
    assert probes < 1000 / 4                 # far from one probe per RCPT
    # At most verify_concurrency probe sessions at once.
    assert p.max_concurrent <= 2, p.max_concurrent


def test_damaged_cache_file_is_ignored_and_replaced(primary_factory, daemon_factory):
    """A cache file that is not what the daemon wrote (here: garbage with
    the right name) never stops the start: it is logged, the tenant starts
    with an empty cache, and the next save replaces the file."""
    p = make_primary(primary_factory)
    d = daemon_factory(start=False, tenants=learn_tenant(p), primary=p)
    rdir = os.path.join(d.spool_dir, "recipients")
    os.makedirs(rdir)
    with open(os.path.join(rdir, "demo"), "wb") as f:
        f.write(b"MXRCACHE\x00\x00\x00\x01" + os.urandom(200))
    d.start()
    d.wait_log("recipients", tenant="demo", result="ignored")
    assert d.tenant_status("demo")["recipients_cached"] == 0
    wait_state(d, "up")
    assert [c for c, _ in rcpt_replies(d, ["bob@example.test"])] == [250]
    d.restart()
    d.wait_log("recipients", tenant="demo", result="loaded", entries="1")
    assert cached(d) == {"bob@example.test": "valid"}


def test_backup_mx_sample_learns():
    """The partner backup-MX sample uses the setting the README recommends
    (test_operations checks that it passes mxspoold -t)."""
    import configparser
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cp.read(os.path.join(mxtest.SRCDIR, "contrib", "examples", "backup-one-partner.ini"))
    assert cp["tenant:example"]["recipients"] == "learn"
    assert cp["tenant:example"]["unknown_recipient"] == "tempfail"

