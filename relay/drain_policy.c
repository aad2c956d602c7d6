/*
 * drain_policy.c - the drain's timing rules as pure functions of (state, now).
 *
 * See drain_policy.h for the contract.  Invariants kept here:
 *
 *  - A token bucket never holds more than its depth, and changing its rate
 *    or depth first credits what was earned at the old rate, then clips.
 *    Hence the number of takes in any window of T ms is at most
 *    depth + (highest rate in the window) * T: the property the integration
 *    test measures ("never more than drain_rate + depth in any second").
 *    Bucket arithmetic is in integer micro-tokens so that the proof in
 *    test_drain_policy.c is exact and replays identically.
 *  - drain_policy_limit() is min(ramp, AIMD), never above drain_rate and
 *    never below min(drain_rate, DRAIN_AIMD_FLOOR): a zero limit would stop
 *    the drain for good, and a bucket rate of 0 means "unlimited".
 *  - Nothing here reads a clock, allocates or logs.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>

#include "mxspool/drain_policy.h"

#define MICRO 1000000.0

/* ---- token bucket ------------------------------------------------------ */

static int64_t
to_micro(double v)
{
	if (!(v > 0))
		return 0;
	if (v > 9e12)                 /* 9e18 micro-tokens: stays in int64 */
		v = 9e12;
	return llround(v * MICRO);
}

/* RATE per second is RATE * 1e6 / 1000 micro-tokens per millisecond. */
static int64_t
rate_to_micro_per_ms(double rate)
{
	int64_t r;

	if (!(rate > 0))
		return 0;
	if (rate > 9e12)
		rate = 9e12;
	r = llround(rate * (MICRO / 1000.0));
	/* A tiny positive rate must not round to 0, which means unlimited. */
	return r > 0 ? r : 1;
}

void
drain_bucket_init(struct drain_bucket *b, double rate, double depth,
    int64_t now)
{
	b->rate_u = rate_to_micro_per_ms(rate);
	b->depth_u = to_micro(depth);
	if (b->depth_u <= 0)
		b->depth_u = 1;
	b->tokens_u = b->depth_u;
	b->last_ms = now;
}

void
drain_bucket_refill(struct drain_bucket *b, int64_t now)
{
	int64_t dt, need;

	if (now <= b->last_ms)
		return;               /* monotonic time; ignore a step back */
	dt = now - b->last_ms;
	b->last_ms = now;
	if (b->rate_u <= 0)
		return;
	need = b->depth_u - b->tokens_u;
	if (need <= 0)
		return;
	/* Compare before multiplying so that a long idle gap cannot overflow. */
	if (dt >= need / b->rate_u + 1)
		b->tokens_u = b->depth_u;
	else
		b->tokens_u += dt * b->rate_u;
	if (b->tokens_u > b->depth_u)
		b->tokens_u = b->depth_u;
}

void
drain_bucket_set(struct drain_bucket *b, double rate, double depth,
    int64_t now)
{
	drain_bucket_refill(b, now);
	b->rate_u = rate_to_micro_per_ms(rate);
	b->depth_u = to_micro(depth);
	if (b->depth_u <= 0)
		b->depth_u = 1;
	if (b->tokens_u > b->depth_u)
		b->tokens_u = b->depth_u;
}

/* Tokens that must be present for a take of N_U (see the header). */
static int64_t
bucket_need(const struct drain_bucket *b, int64_t n_u)
{
	return n_u < b->depth_u ? n_u : b->depth_u;
}

bool
drain_bucket_take(struct drain_bucket *b, double n, int64_t now)
{
	int64_t n_u = to_micro(n);

	drain_bucket_refill(b, now);
	if (b->rate_u <= 0)
		return true;
	if (b->tokens_u < bucket_need(b, n_u))
		return false;
	b->tokens_u -= n_u;
	return true;
}

int64_t
drain_bucket_wait_ms(const struct drain_bucket *b, double n, int64_t now)
{
	struct drain_bucket t = *b;
	int64_t need;

	if (t.rate_u <= 0)
		return 0;
	drain_bucket_refill(&t, now);
	need = bucket_need(&t, to_micro(n));
	if (t.tokens_u >= need)
		return 0;
	return (need - t.tokens_u + t.rate_u - 1) / t.rate_u;
}

double
drain_bucket_tokens(const struct drain_bucket *b, int64_t now)
{
	struct drain_bucket t = *b;

	drain_bucket_refill(&t, now);
	return (double)t.tokens_u / MICRO;
}

/* ---- ramp -------------------------------------------------------------- */

double
drain_ramp_limit(double initial, double rate, uint64_t ramp_ms,
    int64_t elapsed_ms)
{
	if (elapsed_ms < 0)
		elapsed_ms = 0;
	if (ramp_ms == 0 || initial >= rate || (uint64_t)elapsed_ms >= ramp_ms)
		return rate;
	return initial + (rate - initial) * (double)elapsed_ms / (double)ramp_ms;
}

/* ---- AIMD -------------------------------------------------------------- */

/* Weight of a new sample in the fast EWMA: it follows within ~3 replies. */
#define AIMD_FAST_ALPHA 0.3
/* Weight in the baseline: ~64 replies, so a primary that has become slower
 * for good is accepted as the new normal instead of being cut forever. */
#define AIMD_BASE_ALPHA (1.0 / 64.0)

static double
aimd_floor(double rate)
{
	return rate < DRAIN_AIMD_FLOOR ? rate : DRAIN_AIMD_FLOOR;
}

void
drain_aimd_init(struct drain_aimd *a, double rate, int64_t now)
{
	a->rate = rate;
	a->cuts = 0;
	drain_aimd_reset(a, now);
}

void
drain_aimd_reset(struct drain_aimd *a, int64_t now)
{
	a->value = a->rate;
	a->cut_ms = INT64_MIN;
	a->raise_ms = now;
	a->baseline_ms = 0;
	a->fast_ms = 0;
	a->samples = 0;
	a->ok_n = a->temp_n = 0;
	a->trouble = 0;
	a->good = 0;
	a->stretch_ms = now;
	a->stretch_value = a->value;
}

void
drain_aimd_set_rate(struct drain_aimd *a, double rate)
{
	if (a->value >= a->rate || a->value > rate)
		a->value = rate;
	a->rate = rate;
	if (a->value < aimd_floor(rate))
		a->value = aimd_floor(rate);
}

static bool
aimd_in_cooldown(const struct drain_aimd *a, int64_t now)
{
	return a->cut_ms != INT64_MIN && now - a->cut_ms < DRAIN_AIMD_COOLDOWN_MS;
}

/* Trouble ends the 4xx-free stretch: the next one starts at NOW. */
static void
aimd_stretch_restart(struct drain_aimd *a, int64_t now)
{
	a->stretch_ms = now;
	a->stretch_value = a->value;
}

/*
 * Multiplicative decrease by FACTOR, at most once per cooldown, and not
 * below the last good rate when that is still under the value cut from
 * (the floor is used up by the cut: the next cut may go below it).
 */
static bool
aimd_cut(struct drain_aimd *a, double ceiling, double factor, int64_t now)
{
	double before = a->value, base;

	/* Trouble means success is not steady: restart the credit clock. */
	if (a->raise_ms < now)
		a->raise_ms = now;
	if (aimd_in_cooldown(a, now))
		return false;
	base = a->value < ceiling ? a->value : ceiling;
	a->value = base * factor;
	if (a->good > a->value && a->good < base)
		a->value = a->good;
	a->good = 0;
	if (a->value < aimd_floor(a->rate))
		a->value = aimd_floor(a->rate);
	a->trouble = base;
	a->ok_n = a->temp_n = 0;
	a->cut_ms = now;
	a->raise_ms = now + DRAIN_AIMD_COOLDOWN_MS;
	aimd_stretch_restart(a, now);
	if (a->value < before) {
		a->cuts++;
		return true;
	}
	return false;
}

/* Additive increase for the success since the last credit: drain_rate/20
 * per second (at least DRAIN_AIMD_INCREASE_MIN), DRAIN_AIMD_GENTLE times
 * less near the rate at which a 4xx last cut the limit. */
static void
aimd_raise(struct drain_aimd *a, int64_t now)
{
	double inc;

	if (now <= a->raise_ms)
		return;
	inc = a->rate / DRAIN_AIMD_INCREASE_DIVISOR;
	if (inc < DRAIN_AIMD_INCREASE_MIN)
		inc = DRAIN_AIMD_INCREASE_MIN;
	if (a->trouble > 0 && a->value >= DRAIN_AIMD_NEAR * a->trouble &&
	    a->value <= a->trouble / DRAIN_AIMD_NEAR)
		inc /= DRAIN_AIMD_GENTLE;
	a->value += inc * (double)(now - a->raise_ms) / 1000.0;
	if (a->value > a->rate)
		a->value = a->rate;
	a->raise_ms = now;
}

bool
drain_aimd_ok(struct drain_aimd *a, double latency_ms, double ceiling,
    int64_t now)
{
	if (latency_ms < 0)
		latency_ms = 0;
	if (a->ok_n < UINT32_MAX)
		a->ok_n++;
	/* A whole 4xx-free stretch: what was in force at its start is good. */
	if (now - a->stretch_ms >= DRAIN_AIMD_GOOD_MS) {
		double v = a->stretch_value < ceiling ? a->stretch_value : ceiling;

		if (v > a->good)
			a->good = v;
		aimd_stretch_restart(a, now);
	}
	if (a->samples < DRAIN_AIMD_SEED_SAMPLES) {
		/* Seeding: the baseline is the plain mean of the first replies. */
		a->baseline_ms = (a->baseline_ms * a->samples + latency_ms) /
		    (a->samples + 1);
		a->fast_ms = a->baseline_ms;
		a->samples++;
	} else {
		bool risen;

		a->fast_ms += AIMD_FAST_ALPHA * (latency_ms - a->fast_ms);
		risen = a->fast_ms > DRAIN_AIMD_LATENCY_FACTOR * a->baseline_ms &&
		    a->fast_ms - a->baseline_ms > DRAIN_AIMD_LATENCY_MARGIN_MS;
		a->baseline_ms += AIMD_BASE_ALPHA * (latency_ms - a->baseline_ms);
		if (risen)
			return aimd_cut(a, ceiling, DRAIN_AIMD_DECREASE, now);
	}
	aimd_raise(a, now);
	return false;
}

bool
drain_aimd_tempfail(struct drain_aimd *a, double ceiling, int64_t now)
{
	double factor;

	if (a->temp_n < UINT32_MAX)
		a->temp_n++;
	aimd_stretch_restart(a, now);
	/* The share of 4xx since the last cut says how far above the
	 * primary's rate we are (see DRAIN_AIMD_DECREASE_MIN). */
	factor = 1.0 - (double)a->temp_n / (double)(a->temp_n + a->ok_n);
	if (factor < DRAIN_AIMD_DECREASE)
		factor = DRAIN_AIMD_DECREASE;
	if (factor > DRAIN_AIMD_DECREASE_MIN)
		factor = DRAIN_AIMD_DECREASE_MIN;
	return aimd_cut(a, ceiling, factor, now);
}

bool
drain_aimd_timeout(struct drain_aimd *a, double ceiling, int64_t now)
{
	aimd_stretch_restart(a, now);
	return aimd_cut(a, ceiling, DRAIN_AIMD_DECREASE, now);
}

double
drain_aimd_value(const struct drain_aimd *a)
{
	return a->value;
}

/* ---- policy ------------------------------------------------------------ */

static void
policy_sanitize(struct drain_policy_params *dst,
    const struct drain_policy_params *src)
{
	*dst = *src;
	/* A rate of 0 would read as "unlimited" to the bucket: never allow it.
	 * config.c rejects it; this only guards against a caller's slip. */
	if (!(dst->rate > 0))
		dst->rate = DRAIN_AIMD_FLOOR;
	if (!(dst->initial_rate > 0))
		dst->initial_rate = 0;
	if (!(dst->burst > 0))
		dst->burst = 0;
}

static double
ramp_now(const struct drain_policy *p, int64_t now)
{
	return drain_ramp_limit(p->params.initial_rate, p->params.rate,
	    p->params.ramp_ms, now - p->up_ms);
}

double
drain_policy_limit(const struct drain_policy *p, int64_t now)
{
	double l = ramp_now(p, now);
	double fl = aimd_floor(p->params.rate);

	if (p->aimd.value < l)
		l = p->aimd.value;
	if (l > p->params.rate)
		l = p->params.rate;
	if (l < fl)
		l = fl;
	return l;
}

/* Depth of the message bucket for LIMIT: drain_burst, or one second's worth,
 * and at least one message. */
static double
policy_depth(const struct drain_policy *p, double limit)
{
	double d = p->params.burst > 0 ? p->params.burst : limit;

	return d < 1.0 ? 1.0 : d;
}

/* Bring the message bucket to the limit in force at NOW. */
static void
policy_sync(const struct drain_policy *p, struct drain_bucket *msgs,
    int64_t now)
{
	double l = drain_policy_limit(p, now);

	drain_bucket_set(msgs, l, policy_depth(p, l), now);
}

void
drain_policy_init(struct drain_policy *p,
    const struct drain_policy_params *params, int64_t now)
{
	double l;

	policy_sanitize(&p->params, params);
	p->up_ms = now;
	drain_aimd_init(&p->aimd, p->params.rate, now);
	l = drain_policy_limit(p, now);
	drain_bucket_init(&p->msgs, l, policy_depth(p, l), now);
	drain_bucket_init(&p->bytes, (double)p->params.bandwidth,
	    (double)p->params.bandwidth, now);
}

void
drain_policy_configure(struct drain_policy *p,
    const struct drain_policy_params *params, int64_t now)
{
	/* Credit what was earned under the old settings before changing them. */
	drain_bucket_refill(&p->msgs, now);
	drain_bucket_refill(&p->bytes, now);
	policy_sanitize(&p->params, params);
	drain_aimd_set_rate(&p->aimd, p->params.rate);
	policy_sync(p, &p->msgs, now);
	drain_bucket_set(&p->bytes, (double)p->params.bandwidth,
	    (double)p->params.bandwidth, now);
}

void
drain_policy_restart(struct drain_policy *p, int64_t now)
{
	/* The bucket is not refilled here: restarts must not hand out extra
	 * bursts (two flaps in one second would otherwise double the depth). */
	drain_bucket_refill(&p->msgs, now);
	p->up_ms = now;
	drain_aimd_reset(&p->aimd, now);
	policy_sync(p, &p->msgs, now);
}

bool
drain_policy_take(struct drain_policy *p, uint64_t size, int64_t now)
{
	policy_sync(p, &p->msgs, now);
	drain_bucket_refill(&p->bytes, now);
	if (drain_bucket_wait_ms(&p->msgs, 1.0, now) > 0 ||
	    drain_bucket_wait_ms(&p->bytes, (double)size, now) > 0)
		return false;
	/* Both have room: neither take can fail now. */
	(void)drain_bucket_take(&p->msgs, 1.0, now);
	(void)drain_bucket_take(&p->bytes, (double)size, now);
	return true;
}

int64_t
drain_policy_wait_ms(const struct drain_policy *p, uint64_t size, int64_t now)
{
	struct drain_bucket msgs = p->msgs;
	int64_t wm, wb;

	policy_sync(p, &msgs, now);
	wm = drain_bucket_wait_ms(&msgs, 1.0, now);
	wb = drain_bucket_wait_ms(&p->bytes, (double)size, now);
	return wm > wb ? wm : wb;
}

bool
drain_policy_ok(struct drain_policy *p, double latency_ms, int64_t now)
{
	bool cut;

	drain_bucket_refill(&p->msgs, now);
	cut = drain_aimd_ok(&p->aimd, latency_ms, ramp_now(p, now), now);
	policy_sync(p, &p->msgs, now);
	return cut;
}

bool
drain_policy_tempfail(struct drain_policy *p, int64_t now)
{
	bool cut;

	drain_bucket_refill(&p->msgs, now);
	cut = drain_aimd_tempfail(&p->aimd, ramp_now(p, now), now);
	policy_sync(p, &p->msgs, now);
	return cut;
}

bool
drain_policy_timeout(struct drain_policy *p, int64_t now)
{
	bool cut;

	drain_bucket_refill(&p->msgs, now);
	cut = drain_aimd_timeout(&p->aimd, ramp_now(p, now), now);
	policy_sync(p, &p->msgs, now);
	return cut;
}

/* ---- retries, lifetime, delay warnings ---------------------------------- */

int64_t
drain_backoff_next(unsigned attempts, int64_t now, double jitter)
{
	int64_t delay = DRAIN_BACKOFF_MIN_MS;
	double d;

	/* Doubling from the first failure; the loop stops at the cap, so a huge
	 * attempt count cannot overflow the shift. */
	for (unsigned i = 1; i < attempts && delay < DRAIN_BACKOFF_MAX_MS; i++)
		delay *= 2;
	if (delay > DRAIN_BACKOFF_MAX_MS)
		delay = DRAIN_BACKOFF_MAX_MS;
	if (isnan(jitter))
		jitter = 0;
	if (jitter < -1.0)
		jitter = -1.0;
	if (jitter > 1.0)
		jitter = 1.0;
	d = (double)delay * (1.0 + DRAIN_BACKOFF_JITTER * jitter);
	return now + llround(d);
}

int64_t
drain_retry_next(unsigned deferrals, bool primary_up, int64_t now,
    double jitter)
{
	if (deferrals == 0)
		deferrals = 1;
	if (primary_up && deferrals <= DRAIN_RETRY_FAST)
		return now;
	/* The back-off counts from the first deferral that is not fast. */
	if (primary_up)
		deferrals -= DRAIN_RETRY_FAST;
	return drain_backoff_next(deferrals, now, jitter);
}

bool
drain_expired(int64_t arrival, int64_t now, uint64_t lifetime_ms)
{
	if (now < arrival)
		return false;
	return (uint64_t)(now - arrival) >= lifetime_ms;
}

bool
drain_delay_warning_due(int64_t arrival, int64_t now,
    uint64_t delay_warning_ms, bool already_sent)
{
	if (already_sent || delay_warning_ms == 0 || now < arrival)
		return false;
	return (uint64_t)(now - arrival) >= delay_warning_ms;
}

/* ---- connections: the concurrency feedback ----------------------------- */

void
drain_conc_init(struct drain_conc *c, unsigned max, int64_t now)
{
	c->max = max ? max : 1;
	c->limit = c->max;
	c->changed_ms = now;
	c->cut_ms = INT64_MIN;
	c->cuts = 0;
}

void
drain_conc_set_max(struct drain_conc *c, unsigned max, int64_t now)
{
	if (max == 0)
		max = 1;
	if (c->limit >= c->max || c->limit > max) {
		c->limit = max;
		c->changed_ms = now;
	}
	c->max = max;
}

enum drain_conc_change
drain_conc_refused(struct drain_conc *c, unsigned working, int64_t opened_ms,
    int64_t now)
{
	unsigned half, want;

	/* Opened under the limit before the last cut: that cut counted it. */
	if (c->cut_ms != INT64_MIN && opened_ms <= c->cut_ms)
		return DRAIN_CONC_SAME;
	/* Success is not steady: a raise waits again from here. */
	c->changed_ms = now;
	if (c->limit <= 1)
		return DRAIN_CONC_SAME;
	half = (unsigned)((double)c->limit * DRAIN_CONC_DECREASE);
	want = working > half ? working : half;
	if (want < 1)
		want = 1;
	if (want >= c->limit)
		want = c->limit - 1;
	c->limit = want;
	c->cut_ms = now;
	c->cuts++;
	return DRAIN_CONC_CUT;
}

enum drain_conc_change
drain_conc_ok(struct drain_conc *c, unsigned live, int64_t now)
{
	if (c->limit >= c->max || live < c->limit ||
	    now - c->changed_ms < DRAIN_CONC_RAISE_MS)
		return DRAIN_CONC_SAME;
	c->limit++;
	c->changed_ms = now;
	return DRAIN_CONC_RAISED;
}

unsigned
drain_conc_limit(const struct drain_conc *c)
{
	return c->limit;
}

/* ---- the primary's state ------------------------------------------------ */

static int64_t
add_ms(int64_t now, uint64_t ms)
{
	if (ms > (uint64_t)(INT64_MAX - 1) || now > INT64_MAX - 1 - (int64_t)ms)
		return INT64_MAX - 1;
	return now + (int64_t)ms;
}

void
drain_primary_init(struct drain_primary *pr, unsigned up_after,
    uint64_t interval_ms, int64_t now)
{
	pr->state = DRAIN_PRIMARY_UNKNOWN;
	pr->good = 0;
	pr->up_after = up_after ? up_after : 1;
	pr->interval_ms = interval_ms;
	pr->next_ms = now;
}

void
drain_primary_configure(struct drain_primary *pr, unsigned up_after,
    uint64_t interval_ms, int64_t now)
{
	pr->up_after = up_after ? up_after : 1;
	pr->interval_ms = interval_ms;
	if (pr->state != DRAIN_PRIMARY_UP && pr->next_ms > add_ms(now, interval_ms))
		pr->next_ms = add_ms(now, interval_ms);
}

bool
drain_primary_event(struct drain_primary *pr, enum drain_primary_event ev,
    int64_t now)
{
	switch (ev) {
	case DRAIN_EV_PROBE_OK:
		if (pr->state == DRAIN_PRIMARY_UP)
			return false;
		pr->good++;
		if (pr->good >= pr->up_after) {
			pr->state = DRAIN_PRIMARY_UP;
			pr->good = 0;
			pr->next_ms = INT64_MAX;
			return true;
		}
		pr->next_ms = add_ms(now, pr->interval_ms);
		return false;
	case DRAIN_EV_PROBE_FAIL:
	case DRAIN_EV_DELIVERY_FAIL:
		/* A failed probe breaks the run of good ones; a failed delivery
		 * takes an up primary down at once. */
		pr->good = 0;
		pr->next_ms = add_ms(now, pr->interval_ms);
		if (pr->state == DRAIN_PRIMARY_DOWN)
			return false;
		pr->state = DRAIN_PRIMARY_DOWN;
		return true;
	}
	return false;
}

void
drain_primary_probe_now(struct drain_primary *pr, int64_t now)
{
	if (pr->state != DRAIN_PRIMARY_UP)
		pr->next_ms = now;
}

bool
drain_primary_probe_due(const struct drain_primary *pr, int64_t now)
{
	return pr->state != DRAIN_PRIMARY_UP && now >= pr->next_ms;
}

int64_t
drain_primary_next_probe(const struct drain_primary *pr)
{
	return pr->state == DRAIN_PRIMARY_UP ? INT64_MAX : pr->next_ms;
}

enum drain_primary_state
drain_primary_get(const struct drain_primary *pr)
{
	return pr->state;
}

const char *
drain_primary_state_name(enum drain_primary_state s)
{
	switch (s) {
	case DRAIN_PRIMARY_UNKNOWN:
		return "unknown";
	case DRAIN_PRIMARY_DOWN:
		return "down";
	case DRAIN_PRIMARY_UP:
		return "up";
	}
	return "unknown";
}

/* ---- rate meter and ETA ------------------------------------------------- */

/* Floor division: the monotonic clock may in principle be negative. */
static int64_t
second_of(int64_t ms)
{
	return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

void
drain_meter_init(struct drain_meter *m, int64_t now)
{
	m->start_ms = now;
	for (int i = 0; i < DRAIN_METER_SECONDS; i++) {
		m->sec[i] = INT64_MIN;
		m->count[i] = 0;
	}
}

void
drain_meter_add(struct drain_meter *m, uint64_t n, int64_t now)
{
	int64_t s = second_of(now);
	int i = (int)(((s % DRAIN_METER_SECONDS) + DRAIN_METER_SECONDS) %
	    DRAIN_METER_SECONDS);

	if (m->sec[i] != s) {
		m->sec[i] = s;
		m->count[i] = 0;
	}
	m->count[i] += n;
}

double
drain_meter_rate(const struct drain_meter *m, int64_t now)
{
	int64_t s = second_of(now);
	int64_t from = (s - (DRAIN_METER_SECONDS - 1)) * 1000;
	uint64_t total = 0;
	int64_t span;

	for (int i = 0; i < DRAIN_METER_SECONDS; i++)
		if (m->sec[i] != INT64_MIN && m->sec[i] > s - DRAIN_METER_SECONDS &&
		    m->sec[i] <= s)
			total += m->count[i];
	/* The window runs from the start of the oldest slot (or the meter's
	 * start) to NOW: 9 to 10 s, so the current partial second neither
	 * inflates nor dilutes the figure. */
	if (m->start_ms > from)
		from = m->start_ms;
	span = now - from;
	if (span < 1000)
		span = 1000;
	return (double)total * 1000.0 / (double)span;
}

/* Below this measured rate (msg/s) the queue counts as not yet measured. */
#define ETA_MIN_MEASURED 0.01

bool
drain_eta(uint64_t queued, double measured, double limit, bool draining,
    int64_t *eta_s)
{
	double rate, eta;

	if (!draining)
		return false;
	if (queued == 0) {
		*eta_s = 0;
		return true;
	}
	rate = measured >= ETA_MIN_MEASURED ? measured : limit;
	if (!(rate > 0))
		return false;
	eta = ceil((double)queued / rate);
	*eta_s = eta > 9e15 ? (int64_t)9e15 : (int64_t)eta;
	return true;
}
