"""Hostile input of issue 14 against the real mxspoold: NUL bytes in BDAT
(DATA: test_intake_rules.py) are refused at the end of the message (we
offer no BINARYMIME, so the body is text, and a primary that drops NULs
could read "\\0." as the end of data), and xtext values (ENVID, ORCPT)
that decode to anything but printable US-ASCII get 501 5.5.4 (RFC 3461
section 4).

The session always goes on after the refusal, and nothing is queued for a
refused message.  Every socket has a timeout; MXSPOOL_SANITIZED=1 stretches
them.
"""

import pytest

from test_intake_rules import NUL_REPLY, queue, qid_of, session, show


def test_nul_in_bdat_refused_at_last(daemon_factory):
    """BDAT carries text too without BODY=BINARYMIME: a chunk with a NUL is
    taken (250 for the chunk, as RFC 3030 wants every chunk read) and the
    message is refused with 554 5.6.0 at BDAT LAST; nothing is queued."""
    d = daemon_factory()
    with session(d) as c:
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n"
               b"BDAT 16\r\nSubject: x\r\n\r\na\x00"
               b"BDAT 5 LAST\r\nb\r\n\r\n")
        assert c.first() == "250 2.1.0 Ok"
        assert c.first() == "250 2.1.5 Ok"
        assert c.first().startswith("250 2.0.0 Ok: 16 octets")
        assert c.first() == NUL_REPLY
        assert c.cmd1("NOOP") == "250 2.0.0 Ok"
    assert queue(d) == {}
    d.wait_log("reject", stage="bdat", reply=NUL_REPLY)


@pytest.mark.parametrize("mail_params,rcpt_params", [
    (" ENVID=QQ+0D+0AX", ""),
    (" ENVID=a+00b", ""),
    (" ENVID=a+7F", ""),
    ("", " ORCPT=rfc822;u+0D+0ABcc:+20x@example.test"),
    ("", " ORCPT=rfc822;u+09@example.test"),
    ("", " ORCPT=rfc822;u+C3+A9@example.test"),
], ids=["envid-crlf", "envid-nul", "envid-del", "orcpt-crlf", "orcpt-tab",
        "orcpt-8bit"])
def test_xtext_not_printable_refused(daemon_factory, mail_params, rcpt_params):
    """An ENVID or ORCPT whose xtext decodes to a control character, DEL or
    an 8-bit octet gets 501 5.5.4 (Postfix's answer), and the transaction
    can go on with proper values."""
    d = daemon_factory()
    with session(d) as c:
        line = c.cmd1("MAIL FROM:<a@client.test>" + mail_params)
        if mail_params:
            assert line == "501 5.5.4 Bad parameter value", line
            assert c.cmd1("MAIL FROM:<a@client.test> ENVID=QQ+20ok") == "250 2.1.0 Ok"
        else:
            assert line == "250 2.1.0 Ok", line
        line = c.cmd1("RCPT TO:<u@example.test>" + rcpt_params)
        if rcpt_params:
            assert line == "501 5.5.4 Bad parameter value", line
            assert c.cmd1("RCPT TO:<u@example.test> ORCPT=rfc822;u+2Bx@example.test") \
                == "250 2.1.5 Ok"
        else:
            assert line == "250 2.1.5 Ok", line
        assert c.cmd1("DATA").startswith("354 ")
        c.send("Subject: ok\r\n\r\nok\r\n.\r\n")
        qid = qid_of(c.first())
    [r] = show(d, qid)["recipients"]
    orcpt = r.get("orcpt") or ""
    assert "+0D" not in orcpt and "+09" not in orcpt and "+C3" not in orcpt, r
