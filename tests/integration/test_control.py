"""mxspoolctl queue/show report what the journal holds, DSN parameters
included, and say when a listing was cut."""
import json
import smtplib


def test_queue_and_show_report_envelope_and_dsn_parameters(daemon):
    """show --json returns the envelope as received: ENVID, RET, per
    recipient ORCPT and NOTIFY, and the recipient states."""
    s = smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10)
    s.ehlo("client.test")
    s.mail("a@sender.test", ["RET=HDRS", "ENVID=ab+2Bc"])
    assert s.rcpt("u@example.test", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;u+40x@example.test"])[0] == 250
    assert s.rcpt("v@example.test", ["NOTIFY=NEVER"])[0] == 250
    code, reply = s.data(b"Subject: ctl\r\n\r\nhello\r\n")
    assert code == 250
    s.quit()
    qid = reply.decode().rsplit(" ", 1)[1]

    q = json.loads(daemon.ctl("queue", "--json", check=True).stdout)
    assert q["count"] == 1 and q["truncated"] is False
    assert q["messages"][0]["queue_id"] == qid
    assert q["messages"][0]["tenant"] == "demo"

    m = json.loads(daemon.ctl("show", qid, "--json", check=True).stdout)
    assert m["queue_id"] == qid
    assert m["sender"] == "a@sender.test"
    assert m["envid"] == "ab+2Bc"
    assert m["ret"] == "HDRS"
    assert [r["address"] for r in m["recipients"]] == ["u@example.test", "v@example.test"]
    assert m["recipients"][0]["orcpt"] == "rfc822;u+40x@example.test"
    assert m["recipients"][0]["notify"] == ["SUCCESS", "DELAY"]
    assert m["recipients"][1]["notify"] == ["NEVER"]
    assert m["recipients"][1]["orcpt"] is None
    assert {r["state"] for r in m["recipients"]} == {"pending"}


def test_show_and_delete_refuse_bad_or_unknown_ids(daemon):
    """A malformed or unknown queue id is an error with a non-zero exit."""
    r = daemon.ctl("show", "nothex")
    assert r.returncode != 0 and "queue id" in r.stderr
    r = daemon.ctl("delete", "0000000000000001")
    assert r.returncode != 0
