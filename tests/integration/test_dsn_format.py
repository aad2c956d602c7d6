"""RFC 3464 reports from relay/dsn.c, read back by Python's email package.

tests/dsn_dump (a check program) writes one sample report to stdout, built
with dsn_build() and streamed the way the drain sends it (prefix, original
body, suffix).  An independent MIME parser must see the structure we meant:
multipart/report with its report-type, the delivery-status fields per
recipient, and the original message.
"""

import email
import email.policy
import email.utils
import re
import subprocess

import mxtest


def dump(*args, expect_rc=0):
    proc = subprocess.run([mxtest.binary("tests/dsn_dump")] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=mxtest.scaled(10))
    assert proc.returncode == expect_rc, proc.stderr.decode(errors="replace")
    return proc.stdout


def parse(raw):
    # Every line ends in CRLF: no bare LF, no bare CR.
    assert re.search(rb"(?<!\r)\n", raw) is None
    assert re.search(rb"\r(?!\n)", raw) is None
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    return msg


def status_blocks(part):
    """Per-message block and per-recipient blocks of a delivery-status part."""
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    return blocks[0], blocks[1:]


def test_failed_report_structure():
    msg = parse(dump())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["From"].addresses[0].addr_spec == \
        "MAILER-DAEMON@backup-mx.example.net"
    assert msg["Message-ID"].endswith("@backup-mx.example.net>")
    assert email.utils.parsedate_to_datetime(str(msg["Date"])).year == 2025

    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    text = re.sub(r"\s+", " ", parts[0].get_content())
    assert "<bob@example.com>: failed." in text
    assert "host mx1.example.com said:" in text
    assert "User unknown in virtual mailbox table" in text

    per_msg, rcpts = status_blocks(parts[1])
    assert per_msg["Reporting-MTA"] == "dns; backup-mx.example.net"
    assert email.utils.parsedate_to_datetime(
        per_msg["Arrival-Date"]).isoformat() == "2025-02-08T10:00:00+00:00"
    assert per_msg["Original-Envelope-Id"] is None
    assert len(rcpts) == 2
    bob, carol = rcpts
    assert bob["Final-Recipient"] == "rfc822; bob@example.com"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.com"
    diag = re.sub(r"\s+", " ", bob["Diagnostic-Code"])
    assert diag.startswith("smtp; 550-5.1.1 <bob@example.com>")
    assert diag.endswith("User unknown in virtual mailbox table")
    assert email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).year == 2025
    assert bob["Will-Retry-Until"] is None
    assert carol["Final-Recipient"] == "rfc822; carol@example.com"
    assert carol["Status"] == "4.4.7"
    assert carol["Diagnostic-Code"].startswith("X-mxspool;")
    assert carol["Remote-MTA"] is None

    # The whole original came back, headers and body.
    original = parts[2].get_payload()[0]
    assert original["Subject"] == "quarterly report"
    assert original["Message-ID"] == "<q1@example.org>"
    assert "the numbers are attached." in original.get_content()


def test_ret_hdrs_returns_headers_only():
    raw = dump("--ret=hdrs")
    msg = parse(raw)
    parts = msg.get_payload()
    assert parts[2].get_content_type() == "text/rfc822-headers"
    returned = parts[2].get_payload(decode=True)
    assert b"Subject: quarterly report" in returned
    assert b"numbers are attached" not in raw


def test_big_message_returns_headers_only():
    msg = parse(dump("--ret=full", "--big"))
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_envid_and_orcpt():
    msg = parse(dump("--envid=ENV+2B42", "--orcpt=rfc822;bob+2Bsales@example.com"))
    per_msg, rcpts = status_blocks(msg.get_payload()[1])
    assert per_msg["Original-Envelope-Id"] == "ENV+42"
    assert rcpts[0]["Original-Recipient"] == "rfc822;bob+sales@example.com"
    assert rcpts[1]["Original-Recipient"] is None


def test_delayed_report():
    msg = parse(dump("--delayed", "--ret=full"))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    parts = msg.get_payload()
    assert parts[2].get_content_type() == "text/rfc822-headers"
    _, rcpts = status_blocks(parts[1])
    for r in rcpts:
        assert r["Action"] == "delayed"
        assert r["Status"].startswith("4.")
        assert email.utils.parsedate_to_datetime(
            r["Will-Retry-Until"]).isoformat() == "2025-02-13T10:00:00+00:00"
    assert rcpts[0]["Status"] == "4.3.0"


def test_no_report_for_null_sender_or_bounce():
    assert dump("--sender=", expect_rc=3) == b""
    assert dump("--bounce", expect_rc=3) == b""


def test_notify_rules():
    assert dump("--notify=NEVER", expect_rc=3) == b""
    assert dump("--notify=DELAY", expect_rc=3) == b""
    assert dump("--delayed", "--notify=FAILURE", expect_rc=3) == b""
    assert dump("--delivered", expect_rc=3) == b""
    msg = parse(dump("--delivered", "--notify=SUCCESS"))
    _, rcpts = status_blocks(msg.get_payload()[1])
    assert [r["Action"] for r in rcpts] == ["delivered", "delivered"]
    assert rcpts[0]["Status"] == "2.0.0"


def test_smtputf8_uses_global_types():
    raw = dump("--smtputf8", "--rcpt=j\u00f6rg@example.com")
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "global-delivery-status"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/global-delivery-status", "message/global"]
    # Python has no special parser for the global status type: check the
    # raw fields.
    assert "Final-Recipient: utf-8; j\u00f6rg@example.com\r\n".encode() in raw
    assert b"Action: failed\r\n" in raw
