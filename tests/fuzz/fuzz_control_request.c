/*
 * fuzz_control_request.c - libFuzzer target: the control socket's request
 * parsing (relay/control_proto.c) and the filter parser of queue, delete
 * and bounce (control_filter_parse, relay/control_render.c).
 *
 * The input is what a peer writes to the socket.  control.c reads at most
 * CONTROL_REQUEST_MAX - 1 bytes, cuts the line at the first LF and hands
 * the NUL-terminated line to control_proto_split(); this target does the
 * same, from a copy exactly as long as the input so that ASan sees any read
 * past it.  It checks:
 *   - control_proto_line() finds the first LF, or none;
 *   - the words agree with the strtok_r() splitting control.c used before
 *     the parser moved out (a differential check), lie inside the line in
 *     order, are non-empty, hold no blank and are never "--json";
 *   - every allow mask of control_filter_parse() either refuses with a
 *     message or returns a filter whose strings are words of the request
 *     and whose figures are in range.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/control.h"

#include "../../relay/control_internal.h"
#include "../../relay/control_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

/* The words as control.c split them before control_proto.c existed. */
static int
reference_split(char *line, char **argv, int max, int *json)
{
	char *save = NULL, *tok;
	int argc = 0;

	*json = 0;
	for (tok = strtok_r(line, " \t\r\n", &save); tok;
	    tok = strtok_r(NULL, " \t\r\n", &save)) {
		if (strcmp(tok, "--json") == 0) {
			*json = 1;
			continue;
		}
		if (argc == max)
			return -2;
		argv[argc++] = tok;
	}
	return argc == 0 ? -1 : argc;
}

static bool
is_word(const struct control_request *rq, const char *s)
{
	for (int i = 0; i < rq->argc; i++)
		if (rq->argv[i] == s)
			return true;
	return false;
}

static void
check_filters(const struct control_request *rq)
{
	static const unsigned masks[] = {
		/* queue, delete/bounce, and every bit at once */
		CONTROL_F_TENANT_POS | CONTROL_F_MATCH | CONTROL_F_PAGE,
		CONTROL_F_QID | CONTROL_F_TENANT_OPT | CONTROL_F_MATCH |
		    CONTROL_F_DRY_RUN,
		0x3fu,
		0,
	};
	char err[512];

	for (size_t m = 0; m < sizeof(masks) / sizeof(masks[0]); m++) {
		struct control_filter f;

		err[0] = '\0';
		if (control_filter_parse(&f, rq->argc, rq->argv, masks[m], err,
		    sizeof(err)) != 0) {
			CHECK(err[0] != '\0');
			continue;
		}
		CHECK(f.tenant == NULL || is_word(rq, f.tenant));
		CHECK(f.from == NULL || is_word(rq, f.from));
		CHECK(f.to == NULL || is_word(rq, f.to));
		CHECK(f.older_than_ms >= -1);
		CHECK(f.limit <= 10000000);
		CHECK(!f.has_after || f.limit > 0);
		CHECK(!f.has_qid || (masks[m] & CONTROL_F_QID));
		CHECK(!f.dry_run || (masks[m] & CONTROL_F_DRY_RUN));
		/* A queue id alone, or a tenant: never both. */
		CHECK(!(f.has_qid && f.tenant != NULL));
		if (masks[m] & CONTROL_F_QID)
			CHECK(f.has_qid || f.tenant != NULL);
		(void)control_filter_item(&f, 1, 0, 0, 0, 1000);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in, *line, *ref;
	const uint8_t *nl = memchr(data, '\n', size);
	char *ref_argv[CONTROL_PROTO_ARGV_MAX];
	struct control_request rq;
	long n;
	int rc, ref_argc, ref_json;

	/* An exact copy: no terminator after it for the parser to lean on. */
	in = malloc(size ? size : 1);
	if (in == NULL)
		return 0;
	memcpy(in, data, size);
	n = control_proto_line(in, size);
	CHECK(nl == NULL ? n == -1 : n == (long)(nl - data));
	if (n < 0)
		n = (long)(size < CONTROL_REQUEST_MAX - 1 ? size : CONTROL_REQUEST_MAX - 1);
	free(in);

	line = malloc((size_t)n + 1);
	ref = malloc((size_t)n + 1);
	if (line == NULL || ref == NULL) {
		free(line);
		free(ref);
		return 0;
	}
	memcpy(line, data, (size_t)n);
	line[n] = '\0';
	memcpy(ref, line, (size_t)n + 1);

	rc = control_proto_split(line, &rq);
	ref_argc = reference_split(ref, ref_argv, CONTROL_PROTO_ARGV_MAX, &ref_json);
	if (ref_argc == -2) {
		CHECK(rc == CONTROL_PROTO_TOO_MANY);
	} else if (ref_argc == -1) {
		CHECK(rc == CONTROL_PROTO_EMPTY && rq.argc == 0);
		CHECK(rq.json == (ref_json != 0));
	} else {
		CHECK(rc == CONTROL_PROTO_OK && rq.argc == ref_argc);
		CHECK(rq.json == (ref_json != 0));
	}
	CHECK(rq.argc >= 0 && rq.argc <= CONTROL_PROTO_ARGV_MAX);
	for (int i = 0; i < rq.argc; i++) {
		const char *w = rq.argv[i];

		CHECK(w >= line && w < line + n);
		CHECK(i == 0 || w > rq.argv[i - 1]);
		CHECK(w[0] != '\0' && strcspn(w, " \t\r\n") == strlen(w));
		CHECK(strcmp(w, "--json") != 0);
		if (i < ref_argc)
			CHECK(strcmp(w, ref_argv[i]) == 0 &&
			    w - line == ref_argv[i] - ref);
	}
	if (rc == CONTROL_PROTO_OK)
		check_filters(&rq);
	free(line);
	free(ref);
	return 0;
}
