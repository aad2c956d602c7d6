/*
 * fleet_policy.c - the pure arithmetic of the fleet (fleet_policy.h): batch
 * sizes, the degraded fallback, cut detection, held tokens and the
 * published figures.  No clock, no I/O: fleet.c and the unit tests give
 * the time.
 */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/fleet_policy.h"

unsigned
fleet_batch(double limit)
{
	double b = ceil(limit * FLEET_BATCH_FRACTION);

	if (!(b >= 1.0))
		return 1;
	if (b > FLEET_BATCH_MAX)
		return FLEET_BATCH_MAX;
	return (unsigned)b;
}

uint64_t
fleet_batch_bytes(uint64_t bandwidth)
{
	uint64_t b = bandwidth / 10;

	if (bandwidth == 0)
		return 0;
	return b > 0 ? b : 1;
}

double
fleet_fallback_rate(double rate, double limit, unsigned nodes)
{
	double share = rate / (double)(nodes ? nodes : 1);

	return limit < share ? limit : share;
}

uint64_t
fleet_fallback_bandwidth(uint64_t bandwidth, unsigned nodes)
{
	uint64_t share = bandwidth / (nodes ? nodes : 1);

	return bandwidth == 0 ? 0 : share > 0 ? share : 1;
}

unsigned
fleet_fallback_concurrency(unsigned conc, unsigned nodes)
{
	unsigned share = conc / (nodes ? nodes : 1);

	return share > 0 ? share : 1;
}

bool
fleet_limit_cut(double prev_rate, double prev_limit, double rate, double limit)
{
	if (prev_limit <= 0 || prev_rate != rate)
		return false;
	return limit < prev_limit * FLEET_CUT_RATIO;
}

uint64_t
fleet_backoff_next(uint64_t prev_ms)
{
	if (prev_ms < FLEET_BACKOFF_MIN_MS)
		return FLEET_BACKOFF_MIN_MS;
	if (prev_ms >= FLEET_BACKOFF_MAX_MS / 2)
		return FLEET_BACKOFF_MAX_MS;
	return prev_ms * 2;
}

/* ---- held tokens -------------------------------------------------------- */

bool
fleet_reservoir_take(struct fleet_reservoir *r, uint64_t size,
    bool bytes_limited)
{
	if (r->msgs == 0 || (bytes_limited && r->bytes < size))
		return false;
	r->msgs--;
	if (bytes_limited)
		r->bytes -= size;
	return true;
}

void
fleet_reservoir_want(const struct fleet_reservoir *r, uint64_t size,
    unsigned batch, uint64_t batch_bytes, bool bytes_limited, unsigned *msgs,
    uint64_t *bytes)
{
	*msgs = r->msgs == 0 ? batch : 0;
	*bytes = 0;
	if (bytes_limited && r->bytes < size) {
		/* A message bigger than a batch is asked for whole: the grant
		 * script hands out what accrued, the node collects the rest. */
		*bytes = size - r->bytes > batch_bytes ? size - r->bytes : batch_bytes;
	}
}

/* ---- degraded ----------------------------------------------------------- */

void
fleet_fallback_reset(struct fleet_fallback *fb)
{
	fb->init = false;
}

int64_t
fleet_fallback_take(struct fleet_fallback *fb, double rate, uint64_t bandwidth,
    uint64_t size, int64_t now)
{
	/* A depth of one message: the fallback is a pace, never a burst. */
	if (!fb->init) {
		drain_bucket_init(&fb->msgs, rate, 1.0, now);
		drain_bucket_init(&fb->bytes, (double)bandwidth, (double)bandwidth,
		    now);
		/* Start empty-ish: one token, so the first message may go now
		 * and the next one waits for the pace. */
		fb->rate = rate;
		fb->bandwidth = bandwidth;
		fb->init = true;
	}
	if (rate != fb->rate) {
		drain_bucket_set(&fb->msgs, rate, 1.0, now);
		fb->rate = rate;
	}
	if (bandwidth != fb->bandwidth) {
		drain_bucket_set(&fb->bytes, (double)bandwidth, (double)bandwidth, now);
		fb->bandwidth = bandwidth;
	}
	if (drain_bucket_wait_ms(&fb->msgs, 1, now) > 0)
		return drain_bucket_wait_ms(&fb->msgs, 1, now);
	if (bandwidth > 0 && drain_bucket_wait_ms(&fb->bytes, (double)size, now) > 0)
		return drain_bucket_wait_ms(&fb->bytes, (double)size, now);
	(void)drain_bucket_take(&fb->msgs, 1, now);
	if (bandwidth > 0)
		(void)drain_bucket_take(&fb->bytes, (double)size, now);
	return 0;
}

/* ---- payload ------------------------------------------------------------ */

#define FLEET_PAYLOAD_MAGIC "mxspool-fleet 1\n"

int
fleet_payload_encode(const struct fleet_figures *fig, size_t n, char *buf,
    size_t len)
{
	size_t off;
	int w;

	w = snprintf(buf, len, "%s", FLEET_PAYLOAD_MAGIC);
	if (w < 0 || (size_t)w >= len)
		return -1;
	off = (size_t)w;
	for (size_t i = 0; i < n && i < FLEET_FIGURES_MAX; i++) {
		const struct fleet_figures *f = &fig[i];

		w = snprintf(buf + off, len - off, "t %s %s %d %" PRIu64 " %" PRIu64
		    " %lld %.3f %.3f %u\n", f->tenant, f->primary_state[0] ?
		    f->primary_state : "unknown", f->held ? 1 : 0,
		    f->queued_messages, f->queued_bytes, (long long)f->oldest_age_s,
		    f->drain_rate, f->drain_rate_limit, f->connections);
		if (w < 0 || (size_t)w >= len - off)
			return -1;
		off += (size_t)w;
	}
	return (int)off;
}

static bool
fleet_name_ok(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		    *s == '_' || *s == '-'))
			return false;
	return true;
}

/* One "t ..." line (NUL-terminated, no newline) into F; 0 or -1. */
static int
fleet_payload_line(const char *line, struct fleet_figures *f)
{
	char name[FLEET_TENANT_MAX], state[8];
	unsigned long long q, b;
	long long oldest;
	double rate, limit;
	unsigned conns;
	int held, end = 0;

	if (sscanf(line, "t %64s %7s %d %llu %llu %lld %lf %lf %u%n", name, state,
	    &held, &q, &b, &oldest, &rate, &limit, &conns, &end) != 9 ||
	    line[end] != '\0')
		return -1;
	if (!fleet_name_ok(name) || (strcmp(state, "up") != 0 &&
	    strcmp(state, "down") != 0 && strcmp(state, "unknown") != 0) ||
	    (held != 0 && held != 1) || !isfinite(rate) || !isfinite(limit) ||
	    rate < 0 || limit < 0 || oldest < 0)
		return -1;
	memset(f, 0, sizeof(*f));
	memcpy(f->tenant, name, strlen(name) + 1);
	memcpy(f->primary_state, state, strlen(state) + 1);
	f->held = held == 1;
	f->queued_messages = q;
	f->queued_bytes = b;
	f->oldest_age_s = oldest;
	f->drain_rate = rate;
	f->drain_rate_limit = limit;
	f->connections = conns;
	return 0;
}

int
fleet_payload_decode(const char *buf, size_t len, struct fleet_figures *out,
    size_t max)
{
	size_t mlen = strlen(FLEET_PAYLOAD_MAGIC), off, n = 0;
	char line[256];

	if (len > FLEET_PAYLOAD_MAX || len < mlen ||
	    memcmp(buf, FLEET_PAYLOAD_MAGIC, mlen) != 0)
		return -1;
	for (off = mlen; off < len; ) {
		const char *nl = memchr(buf + off, '\n', len - off);
		size_t ll;

		if (nl == NULL)
			return -1;            /* every line ends in \n */
		ll = (size_t)(nl - (buf + off));
		if (ll >= sizeof(line) || memchr(buf + off, '\0', ll) != NULL)
			return -1;
		memcpy(line, buf + off, ll);
		line[ll] = '\0';
		off += ll + 1;
		if (n == max)
			continue;             /* more than we show: skipped */
		if (fleet_payload_line(line, &out[n]) != 0)
			return -1;
		n++;
	}
	return (int)n;
}
