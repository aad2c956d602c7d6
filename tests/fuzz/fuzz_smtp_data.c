/*
 * fuzz_smtp_data.c - libFuzzer target: the DATA-phase decoder.
 *
 * The input after byte 0 is what a client sends after "354"; byte 0 picks
 * the line limit and how the stream is cut into reads.  The decoder runs
 * three times (one buffer; one octet at a time, in place; uneven chunks)
 * and all three must agree.  The result is also checked against a
 * one-line reference: the end of data is the first CR LF "." CR LF with a
 * CR LF assumed before the first octet, nothing else.  Invariants:
 *   - the output is never longer than the input consumed;
 *   - the end is found at most once, exactly where the reference puts it,
 *     so no bare LF or bare CR can end or split a message;
 *   - a message decodes cleanly iff it has no bare CR or LF, no NUL (we
 *     offer no BINARYMIME) and no line over the limit, and then the
 *     output is the reference unstuffing.
 * After an end the rest of the stream is decoded as the next message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/smtp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

struct run {
	int status;                   /* AGAIN if no end */
	size_t consumed;
	size_t outlen;
	char *out;
};

/* Decode IN; CUT(i) gives the size of the next read. */
static void
run_decoder(const char *in, size_t n, size_t max_line, unsigned mode,
    struct run *res)
{
	struct smtp_data_decoder d;
	size_t pos = 0, step = 0;
	char *scratch = malloc(n + 1);

	CHECK(scratch != NULL);
	smtp_proto_data_init(&d, max_line);
	res->status = SMTP_PROTO_AGAIN;
	res->consumed = 0;
	res->outlen = 0;
	while (pos < n) {
		size_t chunk, outlen, consumed;
		int r;

		switch (mode) {
		case 0:
			chunk = n - pos;
			break;
		case 1:
			chunk = 1;
			break;
		default:
			chunk = 1 + (step * 7 + mode) % 13;
			break;
		}
		step++;
		if (chunk > n - pos)
			chunk = n - pos;
		/* Mode 1 decodes in place, the others into a scratch buffer. */
		memcpy(scratch, in + pos, chunk);
		r = smtp_proto_data_push(&d, scratch, chunk,
		    mode == 1 ? scratch : res->out + res->outlen, &outlen,
		    &consumed);
		CHECK(consumed <= chunk && outlen <= consumed);
		if (mode == 1)
			memcpy(res->out + res->outlen, scratch, outlen);
		res->outlen += outlen;
		pos += consumed;
		CHECK(res->outlen <= pos);
		if (r != SMTP_PROTO_AGAIN) {
			size_t o2, c2;

			CHECK(smtp_proto_data_done(&d));
			CHECK(r == smtp_proto_data_error(&d));
			/* At most once: a second push ends nothing more. */
			CHECK(smtp_proto_data_push(&d, scratch, chunk, scratch,
			    &o2, &c2) == r && o2 == 0 && c2 == 0);
			res->status = r;
			break;
		}
		CHECK(consumed == chunk && !smtp_proto_data_done(&d));
	}
	res->consumed = pos;
	free(scratch);
}

/* The end as the reference sees it: index after the final LF, or 0. */
static size_t
reference_end(const char *in, size_t n)
{
	if (n >= 3 && memcmp(in, ".\r\n", 3) == 0)
		return 3;
	for (size_t i = 0; i + 5 <= n; i++)
		if (memcmp(in + i, "\r\n.\r\n", 5) == 0)
			return i + 5;
	return 0;
}

/*
 * Whether MSG (the message without its final ".\r\n") is clean, and its
 * unstuffed form in OUT.
 */
static bool
reference_clean(const char *msg, size_t n, size_t max_line, char *out,
    size_t *outlen)
{
	size_t o = 0, i = 0;

	while (i < n) {
		size_t j = i, content;

		while (j + 1 < n && !(msg[j] == '\r' && msg[j + 1] == '\n'))
			j++;
		if (j + 1 >= n)
			return false;   /* cannot happen before a true end */
		if (msg[i] == '.')
			i++;
		content = j - i;
		for (size_t k = i; k < j; k++)
			if (msg[k] == '\r' || msg[k] == '\n' || msg[k] == '\0')
				return false;
		if (content > max_line - 2)
			return false;
		memcpy(out + o, msg + i, content + 2);
		o += content + 2;
		i = j + 2;
	}
	*outlen = o;
	return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in;
	size_t n, max_line;
	struct run runs[3];
	char *ref;

	if (size == 0)
		return 0;
	/* Limits from 3 (one octet per line) up to the default. */
	max_line = data[0] < 128 ? 3u + data[0] / 4u : 0;
	in = (const char *)data + 1;
	n = size - 1;
	ref = malloc(n + 1);
	CHECK(ref != NULL);
	for (int k = 0; k < 3; k++) {
		runs[k].out = malloc(n + 1);
		CHECK(runs[k].out != NULL);
	}

	while (n > 0) {
		size_t end, limit = max_line ? max_line : SMTP_PROTO_TEXT_LINE_MAX;

		for (unsigned k = 0; k < 3; k++)
			run_decoder(in, n, max_line, k == 2 ? 2u + data[0] % 5u : k,
			    &runs[k]);
		for (int k = 1; k < 3; k++) {
			CHECK(runs[k].status == runs[0].status);
			CHECK(runs[k].consumed == runs[0].consumed);
			CHECK(runs[k].outlen == runs[0].outlen);
			CHECK(memcmp(runs[k].out, runs[0].out, runs[0].outlen) == 0);
		}
		end = reference_end(in, n);
		if (end == 0) {
			CHECK(runs[0].status == SMTP_PROTO_AGAIN);
			CHECK(runs[0].consumed == n);
			break;
		}
		CHECK(runs[0].status != SMTP_PROTO_AGAIN);
		CHECK(runs[0].consumed == end);
		{
			size_t rlen = 0;
			bool clean = reference_clean(in, end - 3, limit, ref, &rlen);

			CHECK(clean == (runs[0].status == SMTP_PROTO_OK));
			if (clean) {
				CHECK(rlen == runs[0].outlen);
				CHECK(memcmp(ref, runs[0].out, rlen) == 0);
			} else
				CHECK(runs[0].status == SMTP_PROTO_EDATA_BARELF ||
				    runs[0].status == SMTP_PROTO_EDATA_BARECR ||
				    runs[0].status == SMTP_PROTO_EDATA_NUL ||
				    runs[0].status == SMTP_PROTO_EDATA_LINE);
		}
		in += end;
		n -= end;
	}
	free(ref);
	for (int k = 0; k < 3; k++)
		free(runs[k].out);
	return 0;
}
