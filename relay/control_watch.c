/*
 * control_watch.c - the frame `mxspoolctl watch` redraws every second.
 *
 * One header line with the daemon's figures, then per tenant one table row
 * (primary state, queue, oldest message, measured and allowed rate, in
 * flight, ETA), a progress bar of the drain: delivered / (delivered +
 * queued), counted since the primary last came up, and the last probe's
 * reply.  Everything is cut to the
 * width the terminal has, so a narrow window shows less, never garbage.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "control_watch.h"

const char *
control_watch_duration(int64_t s, char buf[32])
{
	if (s < 0)
		snprintf(buf, 32, "-");
	else if (s < 60)
		snprintf(buf, 32, "%" PRId64 "s", s);
	else if (s < 3600)
		snprintf(buf, 32, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, 32, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
	else
		snprintf(buf, 32, "%" PRId64 "d%02" PRId64 "h", s / 86400, s / 3600 % 24);
	return buf;
}

static void
watch_bytes(uint64_t v, char buf[32])
{
	static const char unit[] = "BKMGTP";
	double x = (double)v;
	size_t u = 0;

	while (x >= 1024 && u + 1 < sizeof(unit) - 1) {
		x /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, 32, "%" PRIu64 " B", v);
	else
		snprintf(buf, 32, "%.1f %ciB", x, unit[u]);
}

/* Append LINE cut to WIDTH columns (the frame is ASCII) and a newline. */
static void
watch_line(struct control_buf *out, unsigned width, const char *line)
{
	control_buf_printf(out, "%.*s\n", (int)width, line);
}

static void
watch_header(const struct control_status *st, unsigned width,
    const char *clock, struct control_buf *out)
{
	char line[CONTROL_WATCH_MAX_WIDTH * 2], up[32], sb[32];

	snprintf(line, sizeof(line), "mxspool %s   up %s   %u connections   "
	    "spool %s   %s", st->version, control_watch_duration(st->uptime_s, up),
	    st->connections, (watch_bytes(st->spool_bytes, sb), sb), clock);
	watch_line(out, width, line);
	snprintf(line, sizeof(line), "accepted %" PRIu64 "   delivered %" PRIu64
	    "   bounced %" PRIu64, st->accepted_total, st->delivered_total,
	    st->bounced_total);
	watch_line(out, width, line);
	watch_line(out, width, "");
	snprintf(line, sizeof(line), "%-16s %-9s %9s %8s %7s %7s %6s %8s",
	    "TENANT", "PRIMARY", "QUEUED", "OLDEST", "RATE/s", "LIMIT", "FLIGHT",
	    "ETA");
	watch_line(out, width, line);
}

/* "  [#####-----]  42%  (420 delivered, 580 queued)": the bar takes what
 * is left of the width after the figures. */
static void
watch_bar(const struct control_tenant_row *t, unsigned width,
    struct control_buf *out)
{
	char tail[96], line[CONTROL_WATCH_MAX_WIDTH * 2];
	uint64_t done = t->delivered_since_up, all = done + t->queued_messages;
	unsigned pct = all ? (unsigned)(done * 100 / all) : 100;
	int barw, fill, n;

	snprintf(tail, sizeof(tail), " %3u%%  (%" PRIu64 " delivered, %" PRIu64
	    " queued)", pct, done, t->queued_messages);
	barw = (int)width - 4 - (int)strlen(tail);
	if (barw < 10) {
		snprintf(line, sizeof(line), " %s", tail);
		watch_line(out, width, line);
		return;
	}
	if (barw > 60)
		barw = 60;
	fill = all ? (int)((double)barw * (double)done / (double)all) : barw;
	n = snprintf(line, sizeof(line), "  [");
	for (int i = 0; i < barw; i++)
		line[n++] = i < fill ? '#' : '-';
	snprintf(line + n, sizeof(line) - (size_t)n, "]%s", tail);
	watch_line(out, width, line);
}

void
control_render_watch(const struct control_status *st, unsigned width,
    const char *clock, struct control_buf *out)
{
	char line[CONTROL_WATCH_MAX_WIDTH * 2], state[16], age[32], eta[32];

	if (width < CONTROL_WATCH_MIN_WIDTH)
		width = CONTROL_WATCH_MIN_WIDTH;
	if (width > CONTROL_WATCH_MAX_WIDTH)
		width = CONTROL_WATCH_MAX_WIDTH;
	control_buf_printf(out, "ok\n");
	watch_header(st, width, clock, out);
	for (size_t i = 0; i < st->ntenants; i++) {
		const struct control_tenant_row *t = &st->tenants[i];

		snprintf(state, sizeof(state), "%s%s", t->primary_state,
		    t->held ? "/held" : "");
		snprintf(line, sizeof(line), "%-16.16s %-9s %9" PRIu64 " %8s %7.1f "
		    "%7.1f %6u %8s", t->name, state, t->queued_messages,
		    t->queued_messages ?
		    control_watch_duration(t->oldest_age_ms / 1000, age) : "-",
		    t->drain_rate, t->drain_rate_limit, t->in_flight,
		    control_watch_duration(t->eta_s, eta));
		watch_line(out, width, line);
		watch_bar(t, width, out);
		if (t->last_probe != NULL && t->last_probe[0] != '\0') {
			snprintf(line, sizeof(line), "  last probe: %s", t->last_probe);
			/* A multiline reply shows its first line. */
			line[strcspn(line, "\n")] = '\0';
			watch_line(out, width, line);
		}
	}
	if (st->ntenants == 0)
		watch_line(out, width, "(no tenants)");
}
