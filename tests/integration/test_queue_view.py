"""mxspoolctl queue filters and paging, bulk delete/bounce with filters and
--dry-run, requeue: against the real daemon, with the tenant held so the
mail stays queued."""
import json
import smtplib

import mxtest
from mxtest import scaled, wait_until


def tenant(p, **kw):
    t = {"domains": ["example.test"], "primary": p.hostport,
         "probe_interval": "1s", "probe_up_after": 1, "drain_ramp": "0s",
         "drain_rate": 50, "drain_initial_rate": 50}
    t.update(kw)
    return t


def send(d, sender, to, n=1):
    qids = []
    s = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=scaled(20))
    try:
        s.ehlo("client.test")
        for i in range(n):
            s.mail(sender)
            for r in ([to] if isinstance(to, str) else to):
                assert s.rcpt(r)[0] == 250
            code, reply = s.data(("Subject: qv %d\r\nX-Test: yes\r\n\r\nbody line %d\r\n"
                                  % (i, i)).encode())
            assert code == 250
            qids.append(reply.decode().rsplit(" ", 1)[1])
    finally:
        s.quit()
    return qids


def queue(d, *args):
    r = d.ctl("queue", *args, "--json", check=True, timeout=scaled(30))
    return json.loads(r.stdout)


def held_daemon(daemon_factory, primary_factory):
    p = primary_factory()
    d = daemon_factory(primary=p, tenants={"demo": tenant(p)})
    d.wait_log("probe", state="up", timeout=scaled(10))
    assert d.ctl("hold", "demo").returncode == 0
    return p, d


def test_queue_filters_and_paging(daemon_factory, primary_factory):
    p, d = held_daemon(daemon_factory, primary_factory)
    a = send(d, "Alice@Junk.test", "u@example.test", 3)
    b = send(d, "bob@good.test", ["v@example.test", "w@example.test"], 4)
    # Held (not a sleep): nothing is claimed for delivery.
    st = d.tenant_status("demo")
    assert st["held"] and st["in_flight"] == 0, st
    assert p.messages == []
    every = queue(d)
    assert every["count"] == 7
    ids = [m["queue_id"] for m in every["messages"]]
    assert ids == sorted(ids)
    # Like mailq: sender and pending recipients of every row.
    row = {m["queue_id"]: m for m in every["messages"]}
    assert row[a[0]]["sender"].lower() == "alice@junk.test"
    assert row[b[0]]["recipients"] == "v@example.test,w@example.test"
    t = d.ctl("queue", "demo", check=True).stdout
    assert "SENDER" in t and "RECIPIENTS" in t and "bob@good.test" in t

    # --from: sender contains, case-insensitive; --to: a pending recipient.
    got = queue(d, "demo", "--from", "alice@JUNK")
    assert sorted(m["queue_id"] for m in got["messages"]) == sorted(a)
    got = queue(d, "--to", "W@EXAMPLE")
    assert sorted(m["queue_id"] for m in got["messages"]) == sorted(b)
    assert queue(d, "--to", "nobody")["count"] == 0
    # --older-than / --deferred use the index: nothing is an hour old or deferred.
    assert queue(d, "--older-than", "1h")["count"] == 0
    assert queue(d, "--older-than", "0s")["count"] == 7
    assert queue(d, "--deferred")["count"] == 0

    # Paging: disjoint pages covering everything, in queue id order.
    seen, after, pages = [], None, 0
    while True:
        args = ["--limit", "3"] + (["--after", after] if after else [])
        page = queue(d, *args)
        pages += 1
        rows = [m["queue_id"] for m in page["messages"]]
        assert len(rows) <= 3
        seen += rows
        if not page["truncated"]:
            break
        after = rows[-1]
        assert pages < 10
    assert seen == ids and pages == 3
    # Paging with an envelope filter.
    first = queue(d, "--from", "bob", "--limit", "2")
    assert first["count"] == 2 and first["truncated"] is True
    rest = queue(d, "--from", "bob", "--after", first["messages"][-1]["queue_id"])
    assert [m["queue_id"] for m in first["messages"] + rest["messages"]] == sorted(b)
    # The text form says where the next page starts.
    t = d.ctl("queue", "--limit", "2", check=True).stdout
    assert ("--after " + ids[1]) in t

    # The bulk actions take the same filters.
    r = d.ctl("delete", "--tenant", "demo", "--to", "W@example.test", "--dry-run",
              "--json", check=True, timeout=scaled(30))
    assert json.loads(r.stdout)["matched"] == 4
    r = d.ctl("bounce", "--tenant", "demo", "--older-than", "1h", "--dry-run",
              "--json", check=True, timeout=scaled(30))
    assert json.loads(r.stdout)["matched"] == 0
    r = d.ctl("delete", "--tenant", "demo", "--deferred", "--json", check=True)
    assert json.loads(r.stdout) == {"deleted": 0}
    assert queue(d)["count"] == 7

    bad = d.ctl("queue", "--older-than", "soon")
    assert bad.returncode != 0 and "duration" in bad.stderr
    bad = d.ctl("queue", "--limit", "0")
    assert bad.returncode != 0
    bad = d.ctl("queue", "--after", "xyz")
    assert bad.returncode != 0 and "queue id" in bad.stderr


def test_delete_and_bounce_by_tenant_with_filters(daemon_factory, primary_factory):
    p, d = held_daemon(daemon_factory, primary_factory)
    junk = send(d, "spam@junk.test", "u@example.test", 5)
    good = send(d, "friend@good.test", "u@example.test", 2)
    bounce_me = send(d, "back@return.test", "u@example.test", 1)
    st = d.tenant_status("demo")
    assert st["held"] and st["in_flight"] == 0 and st["queued_messages"] == 8, st

    r = d.ctl("delete", "--tenant", "demo", "--from", "JUNK.test", "--dry-run", "--json",
              check=True, timeout=scaled(30))
    assert json.loads(r.stdout) == {"deleted": 0, "matched": 5, "dry_run": True}
    assert queue(d)["count"] == 8      # the dry run changed nothing
    r = d.ctl("delete", "--tenant", "demo", "--from", "junk.test", "--dry-run",
              check=True, timeout=scaled(30))
    assert "would delete 5 messages" in r.stdout

    r = d.ctl("delete", "--tenant", "demo", "--from", "junk.test", check=True,
              timeout=scaled(30))
    assert "deleted 5 messages" in r.stdout
    left = sorted(m["queue_id"] for m in queue(d)["messages"])
    assert left == sorted(good + bounce_me)
    assert not set(junk) & set(left)

    r = d.ctl("bounce", "--tenant", "demo", "--from", "return.test", "--json",
              check=True, timeout=scaled(30))
    assert json.loads(r.stdout) == {"bounced": 1}
    # (The DSN itself may wait for DNS here; the bounce was started.)
    d.wait_log("dsn", qid=bounce_me[0], type="bounce", timeout=scaled(10))

    # No filter but the tenant: everything of it; a tenant must exist.
    r = d.ctl("delete", "--tenant", "nosuch")
    assert r.returncode != 0 and "no tenant" in r.stderr
    r = d.ctl("delete")
    assert r.returncode != 0
    r = d.ctl("delete", "--tenant", "demo", "--json", check=True, timeout=scaled(30))
    n = json.loads(r.stdout)["deleted"]
    assert n >= 2
    wait_until(lambda: all(m["queue_id"] not in good for m in queue(d)["messages"]),
               scaled(10), what="tenant emptied")
    # A single queue id still works as before.
    one = send(d, "x@y.test", "u@example.test", 1)[0]
    r = d.ctl("delete", one, "--dry-run", check=True)
    assert "would delete 1 message" in r.stdout
    r = d.ctl("delete", one, check=True)
    # "deleted", then what it freed and when the space comes back.
    assert r.stdout.splitlines()[0] == "deleted", r.stdout
    assert "bytes of mail" in r.stdout


def test_requeue_retries_deferred_mail_now(daemon_factory, primary_factory):
    p = primary_factory()
    d = daemon_factory(primary=p, tenants={"demo": tenant(p)})
    d.wait_log("probe", state="up", timeout=scaled(10))
    # Three 451s in a row: the first two are retried at once while the
    # primary is up (issue 9), the third waits its back-off.
    p.reply_at("RCPT", 451, times=3)
    send(d, "s@client.test", "u@example.test", 1)
    d.wait_log("defer", timeout=scaled(10), retry_in_s=lambda v: int(v) > 0)
    deferred = queue(d, "--deferred")
    assert deferred["count"] == 1
    assert deferred["messages"][0]["attempts"] >= 1
    assert deferred["messages"][0]["next_attempt_s"] > 0
    # The primary's reply that made it wait, in queue and show.
    assert deferred["messages"][0]["last_reply"].startswith("451")
    qid = deferred["messages"][0]["queue_id"]
    assert "(451" in d.ctl("queue", check=True).stdout
    m = json.loads(d.ctl("show", qid, "--json", check=True).stdout)
    assert m["last_reply"].startswith("451")
    assert "last reply: 451" in d.ctl("show", qid, check=True).stdout
    r = d.ctl("requeue", "demo", "--json", check=True)
    assert json.loads(r.stdout)["requeued"] == 1
    p.wait_for(1, timeout=scaled(10))
    wait_until(lambda: queue(d)["count"] == 0, scaled(10), what="queue empty")
    assert d.ctl("requeue", check=True).stdout.strip().endswith("requeued 0 messages")


def test_show_prints_headers_and_body_on_request(daemon_factory, primary_factory):
    p, d = held_daemon(daemon_factory, primary_factory)
    qid = send(d, "s@client.test", "u@example.test", 1)[0]
    size = queue(d)["messages"][0]["size"]
    t = d.ctl("show", qid, check=True).stdout
    assert "recipient: <u@example.test> pending" in t
    assert "Subject: qv 0\nX-Test: yes\n" in t
    assert "body line 0" not in t and "\r" not in t
    t = d.ctl("show", qid, "--body", check=True).stdout
    assert "X-Test: yes\n" in t and "body line 0" in t
    m = json.loads(d.ctl("show", "--body", qid, "--json", check=True).stdout)
    assert "X-Test: yes" in m["headers"] and "body line" not in m["headers"]
    assert m["body"].startswith("body line 0") and m["body_truncated"] is False
    m = json.loads(d.ctl("show", qid, "--json", check=True).stdout)
    assert "body" not in m and "Subject: qv 0" in m["headers"]
    assert size > 0 and m["size"] == size   # queue and show agree
    bad = d.ctl("show", qid, "--bodyx")
    assert bad.returncode != 0
