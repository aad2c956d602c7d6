/*
 * drain_age.c - the drain's clock: queue_lifetime and delay_warning run on
 * the wall clock, not on delivery attempts; and the primary's capabilities
 * as its last EHLO announced them.
 *
 * Each tenant has a repeating 1 s timer (t->age_timer, started when the
 * tenant is, stopped when it goes away; drain_deps.age_tick_ms in tests)
 * that calls spool_walk_aged() for the tenant, whatever the state of the primary (up, down, never answered)
 * and whether or not the tenant is held: Postfix's maximal_queue_lifetime
 * and Exim's retry give-up times apply whatever the destination does, and
 * a hold stops deliveries, not the clock.  The walk visits messages oldest
 * first and costs the messages it visits, not the queue:
 *
 *   SPOOL_AGE_EXPIRED (arrival at or before now - queue_lifetime): every
 *     recipient still pending is returned to the sender (RFC 3464, Status
 *     4.4.7, Action failed) through drain_bounce.c, as a DRAIN_JOB_EXPIRE
 *     job.  The message is first deferred out of the scheduler's reach
 *     (DRAIN_AGE_HOLD_MS) so that no delivery starts meanwhile.  Skipped:
 *     a message claimed by a delivery (that attempt settles it, and
 *     job_on_result/job_on_load apply the same expiry rule), one that has
 *     a job already, and one whose next attempt lies in the future (a DSN
 *     that could not be sent is retried with the delivery back-off, 1 min
 *     doubling to 1 h; a message deferred by a 4xx before it expired is
 *     bounced when that back-off ends, so at most 1 h late).  The null
 *     sender gets no DSN: its recipients are marked bounced.
 *
 *   SPOOL_AGE_WARN (arrival at or before now - delay_warning, not warned):
 *     the WARNED record is journaled at once (spool_mark_warned), then a
 *     DRAIN_JOB_WARN job loads the message and sends one delay DSN (Action
 *     delayed, Will-Retry-Until = arrival + queue_lifetime) for the pending
 *     recipients whose NOTIFY allows DELAY (not given counts as allowed;
 *     NEVER, or a list without DELAY, gets none: dsn_build decides).  The
 *     record is written for every message that reaches the delay, wanted
 *     notice or not: one small record per message, and after a restart
 *     the walk does not have to load the message again to find out.  A
 *     notice that cannot be sent is not retried (never a second one).
 *
 * Work per tick is bounded: at most DRAIN_AGE_VISITS callbacks per walk,
 * at most DRAIN_AGE_STARTS_PER_S new jobs per tenant per tick, and at
 * most DRAIN_AGE_JOBS jobs (each at most one DSN session) alive per tenant,
 * so a slow bounce relay or sender MX never sees more than that many
 * sessions from one tenant.  When a limit stopped the walk, the end of a
 * job walks again at once (the per-second start budget still applies).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mxspool/log.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/spool.h"
#include "mxspool/util.h"
#include "drain_internal.h"

#define DRAIN_AGE_VISITS       1000               /* callbacks per walk */
#define DRAIN_AGE_STARTS_PER_S 200                /* new jobs per second */
#define DRAIN_AGE_JOBS         16                 /* jobs alive at once */
#define DRAIN_AGE_HOLD_MS      (10 * 60 * 1000)   /* expiring: off the
                                                   * scheduler's list */

struct age_walk {
	struct drain_tenant *t;
	int64_t now;                  /* wall clock */
};

/* ---- the reason a DSN gives --------------------------------------------- */

void
drain__age_reason(struct drain_tenant *t, bool expired, char *buf, size_t len)
{
	char when[64];
	time_t secs;
	struct tm tm;

	if (t->down_since_ms == 0 || drain__tenant_up(t)) {
		snprintf(buf, len, expired ? "message expired in the queue" :
		    "message delayed in the queue");
		return;
	}
	secs = (time_t)(t->down_since_ms / 1000);
	if (gmtime_r(&secs, &tm) == NULL ||
	    strftime(when, sizeof(when), "%a, %d %b %Y %H:%M:%S +0000", &tm) == 0)
		snprintf(when, sizeof(when), "%lld", (long long)secs);
	if (t->down_why[0])
		snprintf(buf, len, "primary unreachable since %s (%.200s)", when,
		    t->down_why);
	else
		snprintf(buf, len, "primary unreachable since %s", when);
}

/* ---- the walk ------------------------------------------------------------ */

static int
age_on_item(void *arg, const struct spool_item *item, enum spool_age what)
{
	struct age_walk *w = arg;
	struct drain_tenant *t = w->t;
	struct drain *d = t->d;
	enum drain_job_kind kind;

	if (t->removed)
		return 1;
	if (drain__job_find(t, item->qid) != NULL)
		return 0;             /* a job settles it */
	if (what == SPOOL_AGE_EXPIRED && (item->claimed ||
	    item->next_attempt_ms > w->now))
		return 0;             /* see the file comment */
	if (t->nage >= DRAIN_AGE_JOBS || t->age_started >= DRAIN_AGE_STARTS_PER_S) {
		t->age_more = true;
		return 1;
	}
	if (what == SPOOL_AGE_EXPIRED) {
		kind = DRAIN_JOB_EXPIRE;
		(void)spool_defer(d->spool, item->qid, w->now + DRAIN_AGE_HOLD_MS,
		    NULL, NULL);
	} else {
		kind = DRAIN_JOB_WARN;
		/* Before the notice: never a second one (file comment). */
		(void)spool_mark_warned(d->spool, item->qid, NULL, NULL);
	}
	if (drain__job_start(t, item->qid, NULL, false, kind) != 0) {
		t->age_more = true;
		return 1;             /* out of memory: next second */
	}
	t->age_started++;
	/* The job is the newest on t->jobs: give it its diagnostic. */
	if (t->jobs != NULL && t->jobs->qid == item->qid)
		drain__age_reason(t, kind == DRAIN_JOB_EXPIRE, t->jobs->why,
		    sizeof(t->jobs->why));
	return 0;
}

static void
age_walk(struct drain_tenant *t)
{
	struct drain *d = t->d;
	struct age_walk w = { t, drain__now(d) };
	int64_t expire_before = INT64_MIN, warn_before = INT64_MIN;

	if (t->removed || d->closing)
		return;
	t->age_more = false;
	if (t->queue_lifetime_ms > 0)
		expire_before = w.now - (int64_t)t->queue_lifetime_ms;
	if (t->delay_warning_ms > 0)
		warn_before = w.now - (int64_t)t->delay_warning_ms;
	if (expire_before == INT64_MIN && warn_before == INT64_MIN)
		return;
	(void)spool_walk_aged(d->spool, t->name, expire_before, warn_before,
	    DRAIN_AGE_VISITS, age_on_item, &w);
}

static void
age_on_timer(uv_timer_t *h)
{
	struct drain_tenant *t = h->data;

	/* The repeat is the tick: a new second, a new start budget. */
	t->age_started = 0;
	age_walk(t);
}

static void
age_on_again(uv_timer_t *h)
{
	struct drain_tenant *t = h->data;

	age_walk(t);
	/* Back to the once-a-second rhythm. */
	(void)uv_timer_start(&t->age_timer, age_on_timer, t->d->age_tick_ms,
	    t->d->age_tick_ms);
}

int
drain__age_init(struct drain_tenant *t)
{
	int rc = uv_timer_init(t->d->loop, &t->age_timer);

	if (rc != 0)
		return rc;
	t->age_timer.data = t;
	t->age_open = true;
	(void)uv_timer_start(&t->age_timer, age_on_timer, t->d->age_tick_ms,
	    t->d->age_tick_ms);
	return 0;
}

void
drain__age_close(struct drain_tenant *t, uv_close_cb cb)
{
	if (t->age_open && !uv_is_closing((uv_handle_t *)&t->age_timer))
		uv_close((uv_handle_t *)&t->age_timer, cb);
}

void
drain__age_job_done(struct drain_tenant *t)
{
	/* Through the timer, not from inside the job's end: the walk may
	 * start jobs that end synchronously. */
	if (t->age_more && t->age_open && !t->removed &&
	    t->age_started < DRAIN_AGE_STARTS_PER_S)
		(void)uv_timer_start(&t->age_timer, age_on_again, 0, 0);
}

/* ---- the primary's capabilities ------------------------------------------ */

void
drain__caps_record(struct drain_tenant *t, unsigned ext, uint64_t size_max,
    uint32_t rcpt_max, uint32_t mail_max, bool tls)
{
	struct spool_caps caps;

	if (t->removed || t->d->closing)
		return;
	memset(&caps, 0, sizeof(caps));
	/* After STARTTLS the EHLO over TLS no longer offers it (RFC 3207). */
	caps.ext = ext | (tls ? SMTP_EXT_STARTTLS : 0);
	caps.size_max = size_max;
	caps.rcpt_max = rcpt_max;     /* RFC 9422 LIMITS; 0 = none */
	caps.mail_max = mail_max;
	caps.seen_ms = drain__now(t->d);
	(void)spool_set_caps(t->d->spool, t->name, &caps, NULL, NULL);
}
