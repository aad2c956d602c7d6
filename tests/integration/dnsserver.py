"""dnsserver - a small scripted DNS server for the integration tests.

    from dnsserver import DNSServer
    s = DNSServer({
        "example.test":     {"MX": [(10, "mx1.example.test"), (20, "backup.example.net")]},
        "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"], "TTL": 60},
        "nomail.test":      {"MX": [(0, ".")]},          # RFC 7505 null MX
        "broken.test":      "SERVFAIL",                   # every query: SERVFAIL
        "black.hole":       "DROP",                       # never answered
    })
    s.port           # UDP and TCP, same port, on 127.0.0.1 (or host="::1")
    s.address        # "127.0.0.1:PORT" / "[::1]:PORT", for dns_servers
    s.records = {...}            # replace the table while running
    s.set("x.test", "A", ["127.0.0.2"])   # or one name/type
    s.count()        # queries seen; count("example.test", "MX", proto="udp")
    s.queries        # list of (proto, name, qtype) in arrival order
    s.stop()

The table maps a name (any case, trailing dot optional) to either a dict of
record type -> list of values, or one of the strings "SERVFAIL", "REFUSED",
"NXDOMAIN", "DROP".  Values: MX as (preference, host) or "10 host"; A, AAAA,
CNAME, PTR, NS as text; TXT as str.  An optional "TTL" key sets the TTL of
that name's records (default: the server's ttl, 300 s).  Answers:
  - a name that is not in the table: NXDOMAIN;
  - a name in the table without records of the asked type: NOERROR and no
    answer (NODATA), with an SOA in the authority section;
  - a CNAME is followed inside the table.
UDP answers larger than 512 bytes (or the EDNS size the query offers) are
sent truncated (TC=1) so that the client retries over TCP.

Only dnslib and the standard library are used; two daemon threads serve UDP
and TCP, and stop() closes both sockets and joins the threads (bounded).
"""

import select
import socket
import struct
import threading

from dnslib import (AAAA, A, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, SOA, TXT,
                    DNSError, DNSHeader, DNSLabel, DNSRecord)

__all__ = ["DNSServer"]

_RDATA = {"A": A, "AAAA": AAAA, "CNAME": CNAME, "NS": NS, "PTR": PTR}
_SPECIAL = ("SERVFAIL", "REFUSED", "NXDOMAIN", "DROP")


def _key(name):
    return str(name).lower().rstrip(".")


class DNSServer:
    """A scripted authoritative-style server on a free loopback port."""

    def __init__(self, records=None, host="127.0.0.1", port=0, ttl=300,
                 tcp=True, udp_max=512):
        self.host = host
        self.ttl = ttl
        self.udp_max = udp_max
        self._lock = threading.Lock()
        self._table = {}
        self.queries = []
        self.records = records or {}
        self._stop = threading.Event()
        self._udp, self._tcp = self._bind(host, port, tcp)
        self.port = self._udp.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True,
                                          name="dns-udp-%d" % self.port)]
        if self._tcp is not None:
            self._threads.append(threading.Thread(
                target=self._serve_tcp, daemon=True,
                name="dns-tcp-%d" % self.port))
        for t in self._threads:
            t.start()

    # ---- table ---------------------------------------------------------

    @property
    def address(self):
        """The server as a c-ares / dns_servers entry."""
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    @property
    def records(self):
        with self._lock:
            return dict(self._table)

    @records.setter
    def records(self, records):
        table = {}
        for name, value in (records or {}).items():
            if isinstance(value, str):
                if value not in _SPECIAL:
                    raise ValueError("unknown behaviour %r for %s" % (value, name))
                table[_key(name)] = value
            else:
                table[_key(name)] = {k.upper(): v for k, v in value.items()}
        with self._lock:
            self._table = table

    def set(self, name, rtype, values):
        """Set (or with values=None remove) one record set."""
        with self._lock:
            entry = self._table.get(_key(name))
            entry = dict(entry) if isinstance(entry, dict) else {}
            if values is None:
                entry.pop(rtype.upper(), None)
            else:
                entry[rtype.upper()] = values
            self._table[_key(name)] = entry

    def count(self, name=None, qtype=None, proto=None):
        """Number of queries seen, optionally for one name / type / proto."""
        with self._lock:
            return sum(1 for p, n, t in self.queries
                       if (name is None or n == _key(name))
                       and (qtype is None or t == qtype.upper())
                       and (proto is None or p == proto))

    def reset_counts(self):
        with self._lock:
            self.queries = []

    # ---- answers -------------------------------------------------------

    def _rrs(self, name, entry, rtype):
        ttl = entry.get("TTL", self.ttl)
        values = entry.get(rtype, [])
        if isinstance(values, (str, tuple)):
            values = [values]           # a single value is a list of one
        out = []
        for v in values:
            if rtype == "MX":
                if isinstance(v, str):
                    pref, host = v.split(None, 1)
                else:
                    pref, host = v
                rdata = MX(host if host != "." else ".", int(pref))
            elif rtype == "TXT":
                rdata = TXT(v)
            else:
                rdata = _RDATA[rtype](v)
            out.append(RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
        return out

    def _answer(self, request, proto):
        """The reply record for REQUEST, or None to stay silent."""
        q = request.q
        qname = str(q.qname)
        qtype = QTYPE.get(q.qtype)
        with self._lock:
            self.queries.append((proto, _key(qname), qtype))
            table = self._table
        reply = request.reply()     # QR, AA, RD copied, question echoed
        reply.header.ra = 1
        entry = table.get(_key(qname))
        if entry == "DROP":
            return None
        if entry in ("SERVFAIL", "REFUSED", "NXDOMAIN"):
            reply.header.rcode = getattr(RCODE, entry)
            return reply
        name = qname
        for _ in range(8):          # follow CNAMEs inside the table
            if entry is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            if not isinstance(entry, dict):
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if qtype != "CNAME" and entry.get("CNAME"):
                cname_rrs = self._rrs(name, entry, "CNAME")
                for rr in cname_rrs:
                    reply.add_answer(rr)
                name = str(cname_rrs[0].rdata.label)
                entry = table.get(_key(name))
                continue
            rrs = self._rrs(name, entry, qtype) if qtype in entry else []
            for rr in rrs:
                reply.add_answer(rr)
            if not rrs:
                # NODATA: an SOA tells resolvers how long to cache it.
                zone = DNSLabel(name)
                reply.add_auth(RR(zone, QTYPE.SOA, ttl=60, rdata=SOA(
                    "ns.invalid", "hostmaster.invalid",
                    (1, 3600, 600, 86400, 60))))
            return reply
        reply.header.rcode = RCODE.SERVFAIL
        return reply

    def _handle(self, data, proto):
        try:
            request = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError, ValueError):
            return None
        if not request.questions:
            return None
        reply = self._answer(request, proto)
        if reply is None:
            return None
        packed = reply.pack()
        if proto == "udp":
            limit = self.udp_max
            for rr in request.ar:           # EDNS0 OPT: the client's size
                if rr.rtype == QTYPE.OPT:
                    limit = max(limit, rr.rclass)
            if len(packed) > limit:
                # Header with TC=1 and the question, no records.  (dnslib's
                # truncate() drops the question too, and resolvers such as
                # c-ares ignore a reply whose question does not match.)
                h = reply.header
                t = DNSRecord(DNSHeader(id=h.id, qr=1, aa=h.aa, tc=1, rd=h.rd,
                                        ra=h.ra, rcode=h.rcode), q=request.q)
                packed = t.pack()
        return packed

    # ---- sockets -------------------------------------------------------

    @staticmethod
    def _bind(host, port, tcp):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # The TCP port must equal the UDP one (c-ares uses one port for
        # both); if the kernel's UDP choice is taken for TCP, try again.
        for _ in range(50):
            u = socket.socket(family, socket.SOCK_DGRAM)
            try:
                u.bind((host, port))
            except OSError:
                u.close()
                raise
            if not tcp:
                return u, None
            t = socket.socket(family, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind((host, u.getsockname()[1]))
                t.listen(16)
                return u, t
            except OSError:
                t.close()
                u.close()
                if port != 0:
                    raise
        raise OSError("no port free for both UDP and TCP on %s" % host)

    def _serve_udp(self):
        sock = self._udp
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([sock], [], [], 0.1)
                if not r:
                    continue
                data, peer = sock.recvfrom(65535)
            except (OSError, ValueError):
                return
            out = self._handle(data, "udp")
            if out is not None:
                try:
                    sock.sendto(out, peer)
                except OSError:
                    pass

    def _serve_tcp(self):
        sock = self._tcp
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([sock], [], [], 0.1)
                if not r:
                    continue
                conn, _ = sock.accept()
            except (OSError, ValueError):
                return
            # One thread per connection: c-ares keeps its TCP connection
            # open between queries, which must not block other clients.
            threading.Thread(target=self._serve_tcp_conn_safe, args=(conn,),
                             daemon=True).start()

    def _serve_tcp_conn_safe(self, conn):
        with conn:
            conn.settimeout(0.2)
            try:
                self._serve_tcp_conn(conn)
            except (OSError, struct.error):
                pass

    def _serve_tcp_conn(self, conn):
        buf = b""
        while not self._stop.is_set():
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                msg, buf = buf[2:2 + n], buf[2 + n:]
                out = self._handle(msg, "tcp")
                if out is not None:
                    conn.sendall(struct.pack("!H", len(out)) + out)
            try:
                chunk = conn.recv(65535)
            except socket.timeout:
                continue            # look at the stop flag now and then
            if not chunk:
                return
            buf += chunk

    def stop(self, timeout=5.0):
        """Close both sockets and join the threads; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return "DNSServer(%s, %d names)" % (self.address, len(self._table))
