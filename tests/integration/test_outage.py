"""The long outage (DESIGN.md "The long outage", issue 10): with the primary
down the whole time, queue_lifetime and delay_warning still run on the
clock, the delay notice is journaled (a kill -9 and restart neither forget
nor repeat it), a tenant's own values win over [server]'s, and the
primary's last EHLO is kept in the spool and shown as primary_caps.

The durations are short (seconds) and every wait is generous (mxtest.scaled)
so that the tests hold on a loaded 2-core machine under ASan.  The bounce
relay is a mxtest.Primary used as a sink; the DSNs it takes are read back
with Python's email package.
"""
import email
import email.policy
import smtplib

import mxtest
from mxtest import scaled

SENDER = "alice@client.test"


def send_one(d, to="user@example.test", sender=SENDER, subject="outage"):
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=scaled(20))
    try:
        s.sendmail(sender, [to], "Subject: %s\r\nMessage-ID: <%s@client.test>\r\n"
                   "\r\nbody\r\n" % (subject, subject))
    finally:
        s.quit()


def report(msg):
    """The message/delivery-status part of a DSN as a list of field dicts
    (the per-message block first, then one per recipient)."""
    m = email.message_from_bytes(msg.data, policy=email.policy.default)
    assert m.get_content_type() == "multipart/report", m.get_content_type()
    for part in m.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = []
            for sub in part.get_payload():
                blocks.append({k.lower(): str(v) for k, v in sub.items()})
            return m, blocks
    raise AssertionError("no message/delivery-status part")


def outage_tenant(d, **extra):
    """A tenant whose primary is a port nobody listens on."""
    t = {"domains": ["example.test"], "primary": "127.0.0.1:%d" % d.dead_port,
         "probe_interval": "1s"}
    t.update(extra)
    return t


def make_daemon(daemon_factory, sink, server=None, tenants=None, **kw):
    srv = {"bounce_relay": sink.hostport}
    srv.update(server or {})
    d = daemon_factory(start=False, server=srv, **kw)
    d.configure(tenants=tenants(d) if callable(tenants) else
                {"demo": outage_tenant(d)})
    d.start()
    return d


def queued(d, tenant="demo"):
    return d.tenant_status(tenant)["queued_messages"]


def test_delay_then_bounce_with_primary_down(daemon_factory, primary_factory):
    # Primary down throughout: a delay DSN (Action: delayed, Will-Retry-Until)
    # after delay_warning, then a bounce (Action: failed, Status: 4.4.7)
    # after queue_lifetime, and the message is gone from the queue.
    sink = primary_factory()
    d = make_daemon(daemon_factory, sink,
                    server={"queue_lifetime": "4s", "delay_warning": "2s"})
    send_one(d)
    assert queued(d) == 1
    got = sink.wait_for(2, timeout=scaled(30))
    m1, b1 = report(got[0])
    assert got[0].mail_from == ""
    assert got[0].rcpt_tos == [SENDER]
    assert b1[1]["action"] == "delayed", b1
    assert b1[1]["final-recipient"].endswith("user@example.test")
    assert "will-retry-until" in b1[1], b1
    m2, b2 = report(got[1])
    assert b2[1]["action"] == "failed", b2
    assert b2[1]["status"] == "4.4.7", b2
    assert "unreachable" in b2[1].get("diagnostic-code", ""), b2
    mxtest.wait_until(lambda: queued(d) == 0, scaled(10), what="an empty queue")
    d.wait_log("bounce", reason="expired", timeout=scaled(5))
    assert d.tenant_status("demo")["bounced_total"] == 1
    # Nothing more can come: the message left the queue after its bounce
    # was sent (no sleep needed to see a third DSN that has no message).
    assert len(d.log_lines("dsn", result="sent")) == 2
    assert len(sink.messages) == 2


def test_delay_notice_not_repeated_after_kill9(daemon_factory, primary_factory):
    # The delay notice is journaled: after kill -9 and a restart the walk
    # does not send it again.
    sink = primary_factory()
    d = make_daemon(daemon_factory, sink,
                    server={"queue_lifetime": "1h", "delay_warning": "2s"})
    send_one(d)
    sink.wait_for(1, timeout=scaled(20))
    d.wait_log("dsn", type="delay", result="sent", timeout=scaled(10))
    # Barriers instead of sleeps.  The 250 for a second message comes after
    # an fdatasync of the journal that covers the WARNED record written
    # before the first notice; after the restart, the second message's own
    # notice (2 s later) shows that the walks ran, and the first message
    # must not have had another.
    send_one(d, subject="barrier")
    d.kill9()
    d.start()
    assert queued(d) == 2
    got = sink.wait_for(2, timeout=scaled(20))
    assert len(got) == 2, [m.data[:200] for m in got]
    assert b"<barrier@client.test>" not in got[0].data
    assert b"<barrier@client.test>" in got[1].data
    for m in got:
        _, b = report(m)
        assert b[1]["action"] == "delayed"


def test_tenant_override_wins(daemon_factory, primary_factory):
    # Two tenants, [server] says 1h: the one with queue_lifetime = 3s
    # bounces, the other keeps its message.
    sink = primary_factory()

    def tenants(d):
        return {"short": outage_tenant(d, domains=["short.test"],
                                       queue_lifetime="3s"),
                "long": outage_tenant(d, domains=["long.test"])}
    d = make_daemon(daemon_factory, sink, tenants=tenants,
                    server={"queue_lifetime": "1h", "delay_warning": "0"})
    st = {t["name"]: t for t in d.status()["tenants"]}
    assert st["short"]["queue_lifetime_s"] == 3
    assert st["long"]["queue_lifetime_s"] == 3600
    assert st["long"]["delay_warning_s"] == 0
    send_one(d, to="u@short.test", subject="short")
    send_one(d, to="u@long.test", subject="long")
    got = sink.wait_for(1, timeout=scaled(20))
    m, b = report(got[0])
    assert b[1]["final-recipient"].endswith("u@short.test")
    assert b[1]["status"] == "4.4.7"
    mxtest.wait_until(lambda: queued(d, "short") == 0, scaled(10),
                      what="short's queue empty")
    # The walk that expired short's message looked at long's too: its 1 h
    # lifetime keeps it (no sleep: nothing could bounce it for an hour).
    assert queued(d, "long") == 1
    assert len(sink.messages) == 1


def test_primary_caps_in_status(daemon_factory, primary_factory):
    # primary_caps is null until the primary answered once; then it shows
    # the EHLO's SIZE, and it is still known after a restart while the
    # primary is down again.
    p = primary_factory(start=False, size_limit=1000)
    d = daemon_factory(primary=p, tenants={"demo": {
        "domains": ["example.test"], "primary": p.hostport,
        "probe_interval": "1s"}})
    assert d.tenant_status("demo")["primary_caps"] is None
    p.start()
    d.ctl("flush", "demo", check=True)

    def caps():
        return d.tenant_status("demo")["primary_caps"]
    mxtest.wait_until(lambda: caps() is not None, scaled(20),
                      what="primary_caps known")
    c = caps()
    assert c["size"] == 1000, c
    assert c["pipelining"] is True and c["8bitmime"] is True, c
    assert isinstance(c["age_s"], int) and c["age_s"] >= 0
    p.stop()
    d.stop()
    d.start()
    c = caps()
    assert c is not None and c["size"] == 1000, c
