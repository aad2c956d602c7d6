/*
 * control_proto.c - the control socket's request line and the /metrics
 * listener's HTTP request head, parsed without I/O (see control_proto.h).
 *
 * Taken out of control.c so that the fuzz targets can reach them without a
 * loop or a relay.  Behaviour is what control.c always did: words split at
 * blanks with --json anywhere; GET /metrics (a query allowed) and GET /,
 * everything else 404.  Every scan is bounded by the length given, so NUL
 * bytes from a peer are just bytes.
 */
#include "config.h"

#include <string.h>

#include "control_proto.h"

long
control_proto_line(const char *buf, size_t len)
{
	const char *nl = memchr(buf, '\n', len);

	return nl == NULL ? -1 : (long)(nl - buf);
}

static bool
control_proto_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int
control_proto_split(char *line, struct control_request *req)
{
	char *p = line;

	memset(req, 0, sizeof(*req));
	for (;;) {
		char *word;

		while (control_proto_blank(*p))
			p++;
		if (*p == '\0')
			break;
		word = p;
		while (*p != '\0' && !control_proto_blank(*p))
			p++;
		if (*p != '\0')
			*p++ = '\0';
		if (strcmp(word, "--json") == 0) {
			req->json = true;
			continue;
		}
		if (req->argc == CONTROL_PROTO_ARGV_MAX)
			return CONTROL_PROTO_TOO_MANY;
		req->argv[req->argc++] = word;
	}
	return req->argc == 0 ? CONTROL_PROTO_EMPTY : CONTROL_PROTO_OK;
}

bool
control_proto_http_complete(const char *buf, size_t len)
{
	return memmem(buf, len, "\r\n\r\n", 4) != NULL ||
	    memmem(buf, len, "\n\n", 2) != NULL;
}

/* Does BUF (LEN bytes) start with the LITERAL? */
static bool
control_proto_starts(const char *buf, size_t len, const char *literal)
{
	size_t n = strlen(literal);

	return len >= n && memcmp(buf, literal, n) == 0;
}

enum control_http_route
control_proto_http_route(const char *buf, size_t len)
{
	if (control_proto_starts(buf, len, "GET /metrics ") ||
	    control_proto_starts(buf, len, "GET /metrics?"))
		return CONTROL_HTTP_METRICS;
	if (control_proto_starts(buf, len, "GET / "))
		return CONTROL_HTTP_INDEX;
	return CONTROL_HTTP_NOT_FOUND;
}
