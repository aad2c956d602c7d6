"""Inbound TLS of issue 14 against the real mxspoold, seen from outside with
`openssl s_client -starttls smtp` and Debian's testssl.sh:

- TLS 1.0 and 1.1 are refused, TLS 1.2 offers AEAD suites only (no CBC:
  the LUCKY13 family), TLS 1.3 works; [tls] ciphers / ciphersuites change
  the lists at a reload, and a list OpenSSL cannot use refuses the reload;
- a renewed certificate is served after SIGHUP without a restart, to new
  sessions and to a session that was opened before the reload and asks for
  STARTTLS after it; a session already in TLS goes on; a broken or
  mismatched certificate refuses the reload and the old one stays;
- testssl.sh (protocols, cipher categories, each cipher, vulnerabilities)
  finds nothing above INFO.

The tests skip with a message when openssl or testssl.sh is missing.  Every
subprocess and socket has a (scaled) timeout.
"""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess

import pytest

from mxtest import scaled

OPENSSL = shutil.which("openssl")
TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
IO_TIMEOUT = scaled(10)

CBC_SUITES = ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
              "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
              "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
              "DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA256:AES128-SHA:AES256-SHA256")

needs_openssl = pytest.mark.skipif(OPENSSL is None,
                                   reason="openssl(1) is not installed (apt-get install openssl)")


def make_cert(directory, cn, kind="ec"):
    """A self-signed certificate for CN (and localhost, 127.0.0.1)."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
              if kind == "ec" else ["-newkey", "rsa:2048"])
    subprocess.run([OPENSSL, "req", "-x509"] + newkey +
                   ["-nodes", "-days", "3", "-subj", "/CN=%s" % cn,
                    "-addext", "subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1" % cn,
                    "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=scaled(60))
    return cert, key


def install(src, dst):
    """Replace DST by a copy of SRC in one rename, as certbot's deploy does."""
    tmp = dst + ".new"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def s_client(port, *args):
    """One `openssl s_client -starttls smtp -brief` handshake; returns
    (ok, output).  -brief prints the protocol, the suite and the peer's
    subject once the handshake is done."""
    r = subprocess.run([OPENSSL, "s_client", "-starttls", "smtp", "-brief",
                        "-connect", "127.0.0.1:%d" % port] + list(args),
                       input="QUIT\r\n", capture_output=True, text=True,
                       timeout=scaled(30))
    out = r.stdout + r.stderr
    ok = r.returncode == 0 and "CONNECTION ESTABLISHED" in out
    return ok, out


def peer_cn(out):
    m = re.search(r"^Peer certificate: .*CN ?= ?([^,\n]+)", out, re.M)
    return m.group(1).strip() if m else None


def suite(out):
    m = re.search(r"^Ciphersuite: (\S+)", out, re.M)
    return m.group(1) if m else None


class Plain:
    """A raw SMTP session that can switch to TLS later (python's ssl)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""
        assert self.reply()[0].startswith("220 ")

    def reply(self):
        lines = []
        while not lines or lines[-1][3:4] == "-":
            while b"\r\n" not in self.buf:
                data = self.sock.recv(4096)
                if not data:
                    raise EOFError("closed after %r" % self.buf)
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
        return lines

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self):
        assert self.cmd("STARTTLS")[0].startswith("220 ")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        return ssl.DER_cert_to_PEM_cert(self.sock.getpeercert(binary_form=True))

    def close(self):
        self.sock.close()


def pem_body(path_or_text):
    text = path_or_text
    if os.path.exists(path_or_text):
        with open(path_or_text) as f:
            text = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return "".join(m.group(1).split())


@pytest.fixture
def certs(tmp_path):
    if OPENSSL is None:
        pytest.skip("openssl(1) is not installed (apt-get install openssl)")
    a = make_cert(str(tmp_path / "a"), "a.mx.test")
    b = make_cert(str(tmp_path / "b"), "b.mx.test")
    live = (str(tmp_path / "live.pem"), str(tmp_path / "live.key"))
    install(a[0], live[0])
    install(a[1], live[1])
    return {"a": a, "b": b, "live": live}


def reload_and_wait(d, result):
    mark = d.mark()
    d.reload()
    return d.wait_log("reload", after=mark, result=result, timeout=10)[0]


@needs_openssl
def test_protocol_floor_and_aead_only(daemon_factory, certs):
    """TLS 1.0 and 1.1 are refused even by a client that allows anything;
    a TLS 1.2 client that offers only CBC suites is refused; the default
    TLS 1.2 suite is AEAD and TLS 1.3 works."""
    cert, key = certs["live"]
    d = daemon_factory(tls={"cert": cert, "key": key})
    for proto in ("-tls1", "-tls1_1"):
        ok, out = s_client(d.smtp_port, proto, "-cipher", "ALL:@SECLEVEL=0")
        assert not ok, "%s was accepted:\n%s" % (proto, out)
    ok, out = s_client(d.smtp_port, "-tls1_2", "-cipher", CBC_SUITES + ":@SECLEVEL=0")
    assert not ok, "a CBC-only TLS 1.2 client was accepted:\n%s" % out
    ok, out = s_client(d.smtp_port, "-tls1_2")
    assert ok, out
    assert re.search(r"GCM|CHACHA20", suite(out) or ""), out
    ok, out = s_client(d.smtp_port, "-tls1_3")
    assert ok and suite(out).startswith("TLS_AES_"), out
    assert peer_cn(out) == "a.mx.test", out
    d.wait_log("starttls", tls=re.compile(r"^TLSv1\.[23] "), count=2)


@needs_openssl
def test_cipher_keys_apply_at_reload(daemon_factory, certs):
    """[tls] ciphers can put a CBC suite back and ciphersuites narrow TLS
    1.3, both at a reload; a list OpenSSL cannot use refuses the reload
    and the running lists stay."""
    cert, key = certs["live"]
    d = daemon_factory(tls={"cert": cert, "key": key})
    d.configure(tls={"cert": cert, "key": key, "ciphers": "ECDHE-ECDSA-AES128-SHA",
                     "ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"})
    reload_and_wait(d, "ok")
    ok, out = s_client(d.smtp_port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    assert ok and suite(out) == "ECDHE-ECDSA-AES128-SHA", out
    ok, out = s_client(d.smtp_port, "-tls1_3")
    assert ok and suite(out) == "TLS_CHACHA20_POLY1305_SHA256", out
    d.configure(tls={"cert": cert, "key": key, "ciphers": "NO-SUCH-SUITE"})
    line = reload_and_wait(d, "refused")
    assert "ciphers" in line["error"], line
    ok, out = s_client(d.smtp_port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    assert ok, "the running lists changed after a refused reload:\n%s" % out
    assert d.running


@needs_openssl
def test_certificate_reload_on_sighup(daemon_factory, certs):
    """Renewing the certificate files and sending SIGHUP serves the new
    certificate to new sessions and to a session that said EHLO before the
    reload and STARTTLS after it; a session already in TLS goes on with
    the old one.  A broken file or a key that does not match refuses the
    reload and the running certificate stays."""
    cert, key = certs["live"]
    d = daemon_factory(tls={"cert": cert, "key": key})
    ok, out = s_client(d.smtp_port)
    assert ok and peer_cn(out) == "a.mx.test", out

    in_tls = Plain(d.smtp_port)
    assert in_tls.cmd("EHLO client.test")[-1].startswith("250 ")
    assert pem_body(in_tls.starttls()) == pem_body(certs["a"][0])
    assert in_tls.cmd("EHLO client.test")[-1].startswith("250 ")
    waiting = Plain(d.smtp_port)
    assert waiting.cmd("EHLO client.test")[-1].startswith("250 ")

    install(certs["b"][0], cert)
    install(certs["b"][1], key)
    reload_and_wait(d, "ok")
    ok, out = s_client(d.smtp_port)
    assert ok and peer_cn(out) == "b.mx.test", out
    assert pem_body(waiting.starttls()) == pem_body(certs["b"][0])
    assert waiting.cmd("EHLO client.test")[-1].startswith("250 ")
    assert in_tls.cmd("NOOP") == ["250 2.0.0 Ok"]
    in_tls.close()
    waiting.close()

    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    line = reload_and_wait(d, "refused")
    assert "certificate" in line["error"], line
    install(certs["a"][0], cert)      # a's certificate with b's key
    line = reload_and_wait(d, "refused")
    assert "does not match" in line["error"] or "mismatch" in line["error"], line
    ok, out = s_client(d.smtp_port)
    assert ok and peer_cn(out) == "b.mx.test", out
    assert d.running


@needs_openssl
def test_outbound_ca_file_reread_at_reload(daemon_factory, primary_factory, certs):
    """[tls] outbound = verify: with a ca_file that does not hold the
    primary's certificate nothing is delivered; once the same file is
    renewed with the right certificate, a reload (same path: no key
    changed) makes the relay trust it and the message is delivered over
    verified TLS.  Before, the outbound context was made again only when
    outbound or the path of ca_file changed."""
    import mxtest
    a_cert, a_key = certs["a"]
    p = primary_factory(tls_cert=mxtest.Cert(a_cert, a_key))
    ca = os.path.join(os.path.dirname(certs["live"][0]), "ca.pem")
    install(certs["b"][0], ca)
    d = daemon_factory(primary=p, tls={"outbound": "verify", "ca_file": ca}, tenants={
        "demo": {"domains": ["example.test"], "primary": p.hostport,
                 "probe_interval": "1s", "probe_up_after": 1}})
    s = Plain(d.smtp_port)
    try:
        assert s.cmd("EHLO client.test")[-1].startswith("250 ")
        assert s.cmd("MAIL FROM:<a@client.test>")[0].startswith("250 ")
        assert s.cmd("RCPT TO:<u@example.test>")[0].startswith("250 ")
        assert s.cmd("DATA")[0].startswith("354 ")
        assert s.cmd("Subject: verify\r\n\r\nhello\r\n.")[0].startswith("250 ")
    finally:
        s.close()
    d.wait_log(re.compile("^(probe|defer)$"), timeout=15,
               reason=re.compile("verif|certificate", re.I))
    assert p.messages == []
    install(a_cert, ca)
    reload_and_wait(d, "ok")
    # A session that connected before a reload reaches STARTTLS after it:
    # it holds its own reference to the context the reload replaced (under
    # ASan, a use after free before).  The slow banner keeps it waiting.
    p.slow(int(scaled(500)))
    seen = p.total_connections
    d.ctl("flush", check=True)
    p.wait_connections(seen + 1, timeout=15)
    reload_and_wait(d, "ok")
    p.slow(0)
    [m] = p.wait_for(1, timeout=30)
    assert m.tls, "delivered without TLS"
    assert d.running


# ---------------------------------------------------------------- testssl.sh

TESTSSL_SEVERITIES_OK = {"OK", "INFO"}
# Notes about testssl.sh's own OpenSSL, not about the server: on a minimal
# Debian root it warns that the local openssl has no GOST engine.
TESTSSL_ABOUT_THE_SCANNER = {"engine_problem"}


def test_testssl_finds_nothing(daemon_factory, tmp_path):
    """testssl.sh against the STARTTLS port (RSA certificate, so that the
    ECDHE-RSA and DHE suites and ROBOT are looked at too), narrowed to
    protocols (-p), cipher categories (-s), every cipher (-E) and the
    vulnerabilities (-U): no finding above INFO, no protocol below TLS 1.2,
    LUCKY13 not vulnerable, and every TLS 1.2 suite AEAD."""
    if TESTSSL is None:
        pytest.skip("testssl.sh is not installed (apt-get install testssl.sh)")
    if OPENSSL is None:
        pytest.skip("openssl(1) is not installed (apt-get install openssl)")
    cert, key = make_cert(str(tmp_path / "rsa"), "mx.test", kind="rsa")
    d = daemon_factory(tls={"cert": cert, "key": key})
    report = str(tmp_path / "testssl.json")
    r = subprocess.run([TESTSSL, "--quiet", "--color", "0", "--warnings", "batch",
                        "-t", "smtp", "-p", "-s", "-E", "-U",
                        "--jsonfile", report, "127.0.0.1:%d" % d.smtp_port],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=scaled(240), cwd=str(tmp_path))
    assert os.path.exists(report), "testssl.sh wrote no report (exit %d):\n%s" % (
        r.returncode, (r.stdout + r.stderr)[-3000:])
    with open(report) as f:
        findings = json.load(f)
    by_id = {}
    for f in findings:
        by_id.setdefault(f["id"], []).append(f)
    assert "scanProblem" not in by_id, by_id["scanProblem"]
    bad = [f for f in findings if f.get("severity") not in TESTSSL_SEVERITIES_OK
           and f["id"] not in TESTSSL_ABOUT_THE_SCANNER]
    assert bad == [], "testssl.sh findings:\n" + "\n".join(
        "%s %s: %s" % (f["severity"], f["id"], f["finding"]) for f in bad)
    for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[proto][0]["finding"].startswith("not offered"), by_id[proto]
    assert by_id["TLS1_2"][0]["finding"].startswith("offered"), by_id["TLS1_2"]
    assert "not vulnerable" in by_id["LUCKY13"][0]["finding"], by_id["LUCKY13"]
    # "Obsolete CBC ciphers": cipherlist_AVERAGE in testssl.sh 3.0,
    # cipherlist_OBSOLETED in 3.2.
    cbc = by_id.get("cipherlist_OBSOLETED") or by_id["cipherlist_AVERAGE"]
    assert cbc[0]["finding"].startswith("not offered"), cbc
    tls12 = [f["finding"] for i, fs in by_id.items() if i.startswith("cipher-tls1_2_")
             for f in fs]
    assert tls12, "testssl.sh listed no TLS 1.2 suite: %r" % sorted(by_id)
    for f in tls12:
        assert re.search(r"GCM|CHACHA20|POLY1305", f), "non-AEAD TLS 1.2 suite: " + f
    assert d.running
