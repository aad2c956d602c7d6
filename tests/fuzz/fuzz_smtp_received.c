/*
 * fuzz_smtp_received.c - libFuzzer target: the Received: field counter.
 *
 * Byte 0 picks how the rest is cut into pushes.  The counter runs three
 * times (one push; one octet per push; uneven pieces) and all three must
 * agree with a line-by-line reference: split at LF; stop at the first line
 * that is empty or a lone CR (the header's end, only when its LF is
 * there); count a line that starts with "received" in any case, then
 * SP/HTAB*, then ':'.  The count and "done" never depend on the split.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mxspool/smtp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static bool
ref_counts(const char *l, size_t n)
{
	size_t i = 8;

	if (n < 9 || strncasecmp(l, "received", 8) != 0)
		return false;
	while (i < n && (l[i] == ' ' || l[i] == '\t'))
		i++;
	return i < n && l[i] == ':';
}

static void
reference(const char *in, size_t n, uint32_t *count, bool *done)
{
	size_t pos = 0;

	*count = 0;
	*done = false;
	while (pos < n) {
		const char *lf = memchr(in + pos, '\n', n - pos);
		size_t len = lf ? (size_t)(lf - (in + pos)) : n - pos;

		if (lf && (len == 0 || (len == 1 && in[pos] == '\r'))) {
			*done = true;
			return;
		}
		if (ref_counts(in + pos, len))
			(*count)++;
		if (lf == NULL)
			return;
		pos += len + 1;
	}
}

static void
run(const char *in, size_t n, unsigned mode, uint32_t *count, bool *done)
{
	struct smtp_received_counter rc;
	size_t pos = 0, step = 0;

	smtp_proto_received_init(&rc);
	while (pos < n) {
		size_t chunk = mode == 0 ? n - pos : mode == 1 ? 1 :
		    1 + (step * 7 + mode) % 13;

		if (chunk > n - pos)
			chunk = n - pos;
		CHECK(smtp_proto_received_push(&rc, in + pos, chunk) == rc.count);
		pos += chunk;
		step++;
	}
	*count = rc.count;
	*done = smtp_proto_received_done(&rc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t want, got;
	bool want_done, got_done;
	const char *in = (const char *)data + 1;
	size_t n;

	if (size == 0)
		return 0;
	n = size - 1;
	reference(in, n, &want, &want_done);
	for (unsigned mode = 0; mode < 3; mode++) {
		run(in, n, mode == 2 ? 2u + data[0] : mode, &got, &got_done);
		CHECK(got == want);
		CHECK(got_done == want_done);
	}
	return 0;
}
