/*
 * fuzz_smtp_reply.c - libFuzzer target: replies, both directions, and
 * xtext.
 *
 * The input is a remote server's reply stream, split at LF (a trailing CR
 * is dropped, as the client's line reader would).  Lines go into the reply
 * accumulator, which must keep its fields consistent whatever arrives.
 * Then the same bytes are used as reply text for smtp_proto_format_reply()
 * and, when that succeeds, parsed back: code and text must survive the
 * round trip.  Finally xtext encode/decode must round-trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/smtp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void
check_reply(const struct smtp_reply *r)
{
	CHECK(r->code >= 200 && r->code <= 559);
	CHECK(r->text_len < sizeof r->text);
	CHECK(r->text[r->text_len] == '\0');
	CHECK(r->nlines >= 1 && r->nlines <= SMTP_PROTO_REPLY_LINES_MAX);
	CHECK(strlen(r->enh) < SMTP_PROTO_ENH_MAX);
	CHECK(r->enh[0] == '\0' || r->enh[0] == '0' + r->code / 100);
}

static void
accumulate(const char *in, size_t n)
{
	struct smtp_reply r;
	size_t i = 0;

	smtp_proto_reply_init(&r);
	while (i < n) {
		const char *nl = memchr(in + i, '\n', n - i);
		size_t span = nl ? (size_t)(nl - (in + i)) : n - i;
		size_t len = span;
		int rc;

		if (len > 0 && in[i + len - 1] == '\r')
			len--;
		rc = smtp_proto_reply_push(&r, in + i, len);
		if (rc == SMTP_PROTO_OK || rc == SMTP_PROTO_AGAIN)
			check_reply(&r);
		if (rc != SMTP_PROTO_AGAIN)
			smtp_proto_reply_init(&r);
		i += span + (nl ? 1 : 0);
	}
}

static void
round_trip(const uint8_t *data, size_t size)
{
	static const char *const enhs[] = { "2.0.0", "4.7.1", "5.1.1" };
	static const int codes[] = { 250, 451, 550 };
	char text[2048], buf[8192];
	size_t tlen, len, pos = 0;
	struct smtp_reply r;
	unsigned k;
	int rc = SMTP_PROTO_AGAIN;

	if (size == 0)
		return;
	k = data[0] % 3;
	tlen = size - 1 < sizeof text - 1 ? size - 1 : sizeof text - 1;
	memcpy(text, data + 1, tlen);
	text[tlen] = '\0';
	if (strlen(text) != tlen)
		return;             /* text with NUL: not a C string */
	if (smtp_proto_format_reply(buf, sizeof buf, &len, codes[k], enhs[k],
	    text) != SMTP_PROTO_OK)
		return;
	CHECK(len == strlen(buf) && len >= 2 &&
	    memcmp(buf + len - 2, "\r\n", 2) == 0);
	smtp_proto_reply_init(&r);
	while (pos < len) {
		const char *crlf = strstr(buf + pos, "\r\n");

		CHECK(crlf != NULL && rc == SMTP_PROTO_AGAIN);
		CHECK((size_t)(crlf - (buf + pos)) + 2 <= SMTP_PROTO_REPLY_LINE_MAX);
		rc = smtp_proto_reply_push(&r, buf + pos,
		    (size_t)(crlf - (buf + pos)));
		pos = (size_t)(crlf - buf) + 2;
	}
	CHECK(rc == SMTP_PROTO_OK);
	CHECK(r.code == codes[k] && strcmp(r.enh, enhs[k]) == 0);
	if (!r.truncated)
		CHECK(strcmp(r.text, text) == 0);
}

static void
xtext(const uint8_t *data, size_t size)
{
	char enc[3 * 256 + 1], dec[257];
	size_t n = size < 256 ? size : 256, elen, dlen;
	int rc;

	CHECK(smtp_proto_xtext_encode((const char *)data, n, enc, sizeof enc,
	    &elen) == SMTP_PROTO_OK);
	CHECK(smtp_proto_xtext_valid(enc, elen));
	rc = smtp_proto_xtext_decode(enc, elen, dec, sizeof dec, &dlen);
	if (memchr(data, 0, n) != NULL)
		CHECK(rc == SMTP_PROTO_ESYNTAX);
	else
		CHECK(rc == SMTP_PROTO_OK && dlen == n &&
		    memcmp(dec, data, n) == 0);
	/* Decoding arbitrary bytes is either refused or shrinks them. */
	rc = smtp_proto_xtext_decode((const char *)data, n, dec, sizeof dec,
	    &dlen);
	if (rc == SMTP_PROTO_OK)
		CHECK(dlen <= n && smtp_proto_xtext_valid((const char *)data, n));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	accumulate((const char *)data, size);
	round_trip(data, size);
	xtext(data, size);
	return 0;
}
