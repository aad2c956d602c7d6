/*
 * control_proto.h - the pure request parsers of the control socket and of
 * the /metrics HTTP listener (relay/control.c does the I/O).
 *
 * Both read bytes from a peer, so both are bounded by the length they are
 * given (no NUL terminator is needed or looked for past it) and are fuzzed
 * (tests/fuzz/fuzz_control_request.c, fuzz_metrics_http.c).  Nothing here
 * allocates, logs or knows the loop.
 */
#ifndef MXSPOOL_CONTROL_PROTO_H
#define MXSPOOL_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>

#define CONTROL_PROTO_ARGV_MAX 32

/* ---- the control socket: one line, words separated by blanks ---------- */

/* A request cut into words.  The words point into the line given to
 * control_proto_split(), which must outlive them. */
struct control_request {
	int argc;
	char *argv[CONTROL_PROTO_ARGV_MAX];
	bool json;                    /* a --json word anywhere (removed) */
};

enum control_proto_status {
	CONTROL_PROTO_OK = 0,
	CONTROL_PROTO_EMPTY = -1,     /* no word but --json */
	CONTROL_PROTO_TOO_MANY = -2,  /* more than CONTROL_PROTO_ARGV_MAX */
};

/*
 * The length of the request line at the front of BUF (LEN bytes: a LF ends
 * it, the LF not counted), or -1 when no LF has come yet.
 */
long control_proto_line(const char *buf, size_t len);

/*
 * Split LINE (NUL-terminated, modified in place: blanks become NULs) into
 * words at spaces, tabs, CRs and LFs.  "--json" words set REQ->json and are
 * not words.  Returns CONTROL_PROTO_OK with REQ->argc >= 1, or a negative
 * enum control_proto_status (REQ->argc words are still valid then).
 */
int control_proto_split(char *line, struct control_request *req);

/* ---- /metrics: an HTTP/1.x request head -------------------------------- */

enum control_http_route {
	CONTROL_HTTP_METRICS,         /* GET /metrics, with or without a query */
	CONTROL_HTTP_INDEX,           /* GET / */
	CONTROL_HTTP_NOT_FOUND,       /* anything else: 404 */
};

/* Has BUF (LEN bytes) a whole request head, ended by an empty line (CRLF
 * CRLF, or LF LF from a hand-typed request)? */
bool control_proto_http_complete(const char *buf, size_t len);

/* What the request line at the front of BUF (LEN bytes) asks for. */
enum control_http_route control_proto_http_route(const char *buf, size_t len);

#endif
