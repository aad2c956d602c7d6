/*
 * fuzz_dsn.c - libFuzzer target: the DSN builder (relay/dsn.c) fed with
 * hostile envelope strings and a hostile returned header section.
 *
 * Everything a report carries comes from outside: the sender, recipients,
 * ENVID and ORCPT from the client's MAIL and RCPT, the diagnostic and the
 * remote MTA's name from the primary's reply, the header section from the
 * message.  Input layout: 32 octets of numbers (flags, recipient count and
 * actions, NOTIFY bits, sizes, times, nonce), then NUL-separated strings -
 * hostname, sender, queue id, ENVID, and per recipient address, ORCPT,
 * status, remote MTA, diagnostic - and the rest, NULs included, is the
 * header section.  Each string is cut to the length the rest of the relay
 * lets through (a host name 253, an address 254 as the SMTP parser and the
 * spool's decoder allow, ENVID 100, ORCPT 500, the queue id 16; the reply
 * text is not bounded).  When dsn_build() says DSN_OK, the report must be a
 * message nobody can break out of:
 *   - CRLF line ends only, no NUL, prefix_len and suffix_len exact;
 *   - the report's own header and its first two parts: lines of at most
 *     998 octets, every line a known field or a continuation (nothing from
 *     the input starts a field of its own), no field twice in the header;
 *   - the delivery-status part: one Final-Recipient, Action and Status per
 *     reported recipient (out->nrcpt), Status a c.sss.ddd code, Action
 *     failed, delayed or delivered;
 *   - the boundary closes exactly the parts we made, and the suffix is its
 *     close delimiter;
 *   - 8-bit octets only in a report that says so (out->eightbit), and in
 *     the report's own parts only when it is SMTPUTF8 (out->smtputf8);
 *   - the returned header section makes no line longer than its own
 *     longest line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/dsn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define FIXED 32
#define RCPT_MAX 8

static const char *const header_fields[] = { "Date", "From", "To", "Subject",
	"Message-ID", "Auto-Submitted", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", NULL };
static const char *const part_fields[] = { "Content-Description",
	"Content-Type", "Content-Transfer-Encoding", NULL };
static const char *const status_fields[] = { "Reporting-MTA",
	"X-Mxspool-Queue-ID", "Original-Envelope-Id", "Arrival-Date",
	"Original-Recipient", "Final-Recipient", "Action", "Status",
	"Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date",
	"Will-Retry-Until", NULL };

struct reader {
	const uint8_t *p, *end;
};

/* The next NUL-terminated string of the input, cut to MAX octets, or NULL
 * when none is left (each is copied out, its own allocation for ASan). */
static char *
next_str(struct reader *r, size_t max, char **keep, size_t *nkeep)
{
	const uint8_t *z;
	char *s;
	size_t n;

	if (r->p >= r->end)
		return NULL;
	z = memchr(r->p, '\0', (size_t)(r->end - r->p));
	n = z ? (size_t)(z - r->p) : (size_t)(r->end - r->p);
	s = malloc(n + 1);
	if (s == NULL)
		return NULL;
	memcpy(s, r->p, n);
	s[n] = '\0';
	r->p += n + (z ? 1 : 0);
	if (n > max)
		s[max] = '\0';
	keep[(*nkeep)++] = s;
	return s;
}

static int64_t
get_time(const uint8_t *p)
{
	/* Seconds: from before 1970 to far beyond 2100, and zero. */
	int32_t s = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3]);

	return (int64_t)s * 1000;
}

/* Is LINE (LEN octets) "Name: value" with Name in NAMES, or a
 * continuation?  Sets *NAME_I to the field's index (-1: continuation). */
static bool
known_field(const char *line, size_t len, const char *const *names, int *name_i)
{
	if (len > 0 && (line[0] == ' ' || line[0] == '\t')) {
		*name_i = -1;
		return true;
	}
	for (int i = 0; names[i] != NULL; i++) {
		size_t n = strlen(names[i]);

		if (len >= n + 2 && memcmp(line, names[i], n) == 0 &&
		    line[n] == ':' && line[n + 1] == ' ') {
			*name_i = i;
			return true;
		}
	}
	return false;
}

static bool
status_code(const char *v, size_t len)
{
	size_t i = 2, d;

	if (len < 5 || (v[0] != '2' && v[0] != '4' && v[0] != '5') || v[1] != '.')
		return false;
	for (d = 0; i < len && v[i] >= '0' && v[i] <= '9'; i++)
		d++;
	if (d < 1 || d > 3 || i >= len || v[i++] != '.')
		return false;
	for (d = 0; i < len && v[i] >= '0' && v[i] <= '9'; i++)
		d++;
	return d >= 1 && d <= 3 && i == len;
}

struct walk {
	const struct dsn_output *out;
	char boundary[128];
	size_t blen;
	int part;                     /* 0 header or preamble, 1..3 the parts */
	bool preamble;                /* after the header, before part 1 */
	bool in_part_header;
	unsigned seen_header[16];
	size_t finals, actions, statuses;
	size_t longest_input;
};

/* One line of the prefix (CRLF removed). */
static void
walk_line(struct walk *w, const char *l, size_t len)
{
	int fi;

	if (len >= 2 + w->blen && w->blen > 0 && l[0] == '-' && l[1] == '-' &&
	    memcmp(l + 2, w->boundary, w->blen) == 0 && w->part < 3) {
		CHECK(len == 2 + w->blen);
		CHECK(w->part > 0 || w->preamble);
		w->part++;
		w->preamble = false;
		w->in_part_header = true;
		return;
	}
	if (w->part == 3 && !w->in_part_header) {
		/* The returned header section. */
		CHECK(len <= w->longest_input);
		return;
	}
	CHECK(len <= 998);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)l[i] >= 0x80)
			CHECK(w->out->smtputf8 && w->out->eightbit);
	if (w->preamble)
		return;   /* "This is a MIME-encapsulated message." */
	if (w->part == 0) {
		if (len == 0) {
			CHECK(w->seen_header[7] == 1);   /* Content-Type */
			w->preamble = true;              /* until "--B" */
			return;
		}
		CHECK(known_field(l, len, header_fields, &fi));
		if (fi >= 0)
			CHECK(++w->seen_header[fi] == 1);
		/* The boundary parameter, folded onto its own line. */
		if (fi == -1 && len > 11 && memcmp(l, "\tboundary=\"", 11) == 0 &&
		    w->blen == 0) {
			const char *q = memchr(l + 11, '"', len - 11);

			CHECK(q != NULL && (size_t)(q - (l + 11)) < sizeof(w->boundary));
			w->blen = (size_t)(q - (l + 11));
			memcpy(w->boundary, l + 11, w->blen);
			CHECK(w->blen > 0);
		}
		return;
	}
	if (w->in_part_header) {
		if (len == 0) {
			w->in_part_header = false;
			return;
		}
		CHECK(known_field(l, len, part_fields, &fi));
		return;
	}
	if (w->part == 2 && len > 0) {
		CHECK(known_field(l, len, status_fields, &fi));
		if (fi == 5)
			w->finals++;
		if (fi == 6) {
			const char *v = l + 8;
			size_t vl = len - 8;

			w->actions++;
			CHECK((vl == 6 && memcmp(v, "failed", 6) == 0) ||
			    (vl == 7 && memcmp(v, "delayed", 7) == 0) ||
			    (vl == 9 && memcmp(v, "delivered", 9) == 0));
		}
		if (fi == 7) {
			w->statuses++;
			CHECK(status_code(l + 8, len - 8));
		}
	}
}

static void
check_output(const struct dsn_report *r, const struct dsn_output *out)
{
	struct walk w = { .out = out };
	const char *p = out->prefix, *end = out->prefix + out->prefix_len;
	char close[160];
	size_t cur = 0;

	CHECK(out->prefix != NULL && out->suffix != NULL);
	CHECK(strlen(out->prefix) == out->prefix_len);
	CHECK(strlen(out->suffix) == out->suffix_len);
	CHECK(out->nrcpt >= 1 && out->nrcpt <= r->nrcpt);
	for (size_t i = 0; i < out->prefix_len; i++) {
		if (p[i] == '\r')
			CHECK(i + 1 < out->prefix_len && p[i + 1] == '\n');
		if (p[i] == '\n')
			CHECK(i > 0 && p[i - 1] == '\r');
		if ((unsigned char)p[i] >= 0x80)
			CHECK(out->eightbit);
	}
	CHECK(out->prefix_len >= 2 && p[out->prefix_len - 2] == '\r');
	/* The longest line of the header section as given (any line end). */
	for (size_t i = 0; i < r->headers_len; i++) {
		if (r->headers[i] == '\r' || r->headers[i] == '\n')
			cur = 0;
		else if (++cur > w.longest_input)
			w.longest_input = cur;
	}
	while (p < end) {
		const char *e = memmem(p, (size_t)(end - p), "\r\n", 2);

		CHECK(e != NULL);
		walk_line(&w, p, (size_t)(e - p));
		p = e + 2;
	}
	CHECK(w.blen > 0);
	CHECK(w.part == (r->headers != NULL && r->headers_len > 0 ? 3 : 2));
	CHECK(w.finals == out->nrcpt && w.actions == out->nrcpt &&
	    w.statuses == out->nrcpt);
	snprintf(close, sizeof(close), "\r\n--%.*s--\r\n", (int)w.blen, w.boundary);
	CHECK(strcmp(out->suffix, close) == 0);
	CHECK(!out->include_body || r->message_size <= DSN_FULL_MAX);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dsn_rcpt rc[RCPT_MAX];
	struct dsn_report r;
	struct dsn_output out;
	struct reader rd;
	char *keep[4 + 5 * RCPT_MAX];
	size_t nkeep = 0, nrcpt;
	char *headers = NULL;
	int st;

	if (size < FIXED)
		return 0;
	memset(&r, 0, sizeof(r));
	memset(rc, 0, sizeof(rc));
	r.ret = (enum env_ret)(data[0] % 3);
	r.body = (enum env_body)((data[0] >> 2) % 4);
	r.smtputf8 = (data[0] & 0x10) != 0;
	r.is_bounce = (data[0] & 0xe0) == 0xe0;   /* rarely: it skips */
	nrcpt = 1 + data[1] % RCPT_MAX;
	r.message_size = ((uint64_t)data[2] << 16 | (uint64_t)data[3] << 8) * 2;
	r.arrival_ms = get_time(data + 4);
	r.now_ms = get_time(data + 8);
	memcpy(&r.nonce, data + 12, sizeof(r.nonce));
	for (size_t i = 0; i < nrcpt; i++) {
		uint8_t b = data[20 + i], t = data[28 + i % 4];

		rc[i].action = (enum dsn_action)(b % 3);
		rc[i].notify = (b >> 2) & 0xf;
		rc[i].diagnostic_local = (b & 0x40) != 0;
		rc[i].last_attempt_ms = (b & 0x80) ? get_time(data + 4) + t : 0;
		rc[i].retry_until_ms = (t & 1) ? get_time(data + 8) + t * 86400000LL : 0;
	}
	rd.p = data + FIXED;
	rd.end = data + size;
	r.hostname = next_str(&rd, 253, keep, &nkeep);
	r.sender = next_str(&rd, 254, keep, &nkeep);
	r.queue_id = next_str(&rd, 16, keep, &nkeep);
	r.envid = next_str(&rd, 100, keep, &nkeep);
	for (size_t i = 0; i < nrcpt; i++) {
		rc[i].addr = next_str(&rd, 254, keep, &nkeep);
		rc[i].orcpt = next_str(&rd, 500, keep, &nkeep);
		rc[i].status = next_str(&rd, 16, keep, &nkeep);
		rc[i].remote_mta = next_str(&rd, 253, keep, &nkeep);
		rc[i].diagnostic = next_str(&rd, SIZE_MAX, keep, &nkeep);
		/* An empty string stands for "not given" where NULL is allowed. */
		if (rc[i].orcpt && rc[i].orcpt[0] == '\0')
			rc[i].orcpt = NULL;
		if (rc[i].status && rc[i].status[0] == '\0')
			rc[i].status = NULL;
	}
	if (rd.p < rd.end) {
		r.headers_len = (size_t)(rd.end - rd.p);
		headers = malloc(r.headers_len);
		if (headers != NULL)
			memcpy(headers, rd.p, r.headers_len);
		else
			r.headers_len = 0;
		r.headers = headers;
	}
	r.rcpt = rc;
	r.nrcpt = nrcpt;

	st = dsn_build(&r, &out);
	if (st == DSN_OK) {
		check_output(&r, &out);
		dsn_output_free(&out);
	} else {
		CHECK(out.prefix == NULL && out.suffix == NULL);
		CHECK(st == DSN_SKIP_NULL_SENDER || st == DSN_SKIP_NOTIFY ||
		    st == DSN_EINVAL);
	}
	free(headers);
	for (size_t i = 0; i < nkeep; i++)
		free(keep[i]);
	return 0;
}
