/*
 * fuzz_metrics_http.c - libFuzzer target: the /metrics listener's HTTP
 * request head (relay/control_proto.c), which any host that can reach
 * metrics_listen may send.
 *
 * control.c appends what it reads to an 8 KiB buffer and, after every
 * read, asks control_proto_http_complete() whether the head is whole, then
 * control_proto_http_route() what it asks for.  This target feeds the input
 * in the chunks a slow client could send (the prefixes ending at the chunk
 * boundaries the first byte chooses: at most READS_MAX of them, then the
 * whole input), each from a copy exactly as long as the bytes so far, and
 * checks:
 *   - "complete" is monotonic: once a prefix is complete, every longer one
 *     is, and it agrees with a plain search for CRLF CRLF or LF LF;
 *   - the route is a function of the request line's first bytes only:
 *     /metrics exactly for "GET /metrics " and "GET /metrics?", the index
 *     exactly for "GET / ", everything else 404 - NUL bytes included.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../relay/control_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define HTTP_MAX 8192   /* CONTROL_HTTP_MAX in control.c */
#define READS_MAX 64    /* prefixes checked per input: keeps it linear */

static bool
has(const uint8_t *d, size_t n, const char *pat)
{
	size_t m = strlen(pat);

	for (size_t i = 0; i + m <= n; i++)
		if (memcmp(d + i, pat, m) == 0)
			return true;
	return false;
}

static bool
starts(const uint8_t *d, size_t n, const char *pat)
{
	size_t m = strlen(pat);

	return n >= m && memcmp(d, pat, m) == 0;
}

static void
check_prefix(const uint8_t *data, size_t n, bool *was_complete)
{
	char *buf = malloc(n ? n : 1);
	enum control_http_route want, got;
	bool complete;

	if (buf == NULL)
		return;
	memcpy(buf, data, n);
	complete = control_proto_http_complete(buf, n);
	CHECK(complete == (has(data, n, "\r\n\r\n") || has(data, n, "\n\n")));
	CHECK(!*was_complete || complete);
	*was_complete = complete;
	got = control_proto_http_route(buf, n);
	if (starts(data, n, "GET /metrics ") || starts(data, n, "GET /metrics?"))
		want = CONTROL_HTTP_METRICS;
	else if (starts(data, n, "GET / "))
		want = CONTROL_HTTP_INDEX;
	else
		want = CONTROL_HTTP_NOT_FOUND;
	CHECK(got == want);
	free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t step, n;
	unsigned reads = 0;
	bool complete = false;

	if (size == 0)
		return 0;
	/* The first byte picks the read size (1..256 bytes per read). */
	step = (size_t)data[0] + 1;
	data++;
	size--;
	if (size > HTTP_MAX - 1)
		size = HTTP_MAX - 1;
	for (n = step < size ? step : size; ; n += step) {
		if (n > size || ++reads == READS_MAX)
			n = size;
		check_prefix(data, n, &complete);
		if (n == size)
			break;
	}
	return 0;
}
