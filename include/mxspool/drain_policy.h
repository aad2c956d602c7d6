/*
 * drain_policy.h - the timing rules of the drain, as pure functions.
 *
 * Everything DESIGN.md "Drain" says about *when* mail may leave lives here:
 * the token buckets (messages and bytes), the ramp after the primary comes
 * back, the AIMD back-off driven by 4xx replies, timeouts and reply latency,
 * the per-recipient retry schedule, queue lifetime and delay warnings, the
 * primary's up/down state machine and the 10-second rate meter.
 *
 * None of it reads a clock, allocates, logs or touches libuv: time is always
 * the NOW argument, a monotonic value in milliseconds (util_mono_ms() in the
 * daemon, a plain counter in the tests), except where a parameter says it is
 * wall-clock time.  The scheduler in drain.c owns the libuv timers and
 * decides what to log; these functions only return what changed.
 *
 * The state structs are declared here (not opaque) so that drain.c can embed
 * them in its per-tenant struct without an allocation that could fail, the
 * way libuv exposes its handle structs.  Their fields are private: read and
 * change them only through the functions below.
 */
#ifndef MXSPOOL_DRAIN_POLICY_H
#define MXSPOOL_DRAIN_POLICY_H

#include <stdbool.h>
#include <stdint.h>

/* ---- token bucket ------------------------------------------------------ */

/*
 * A token bucket in integer micro-tokens (so that a 10-minute simulation is
 * exact and repeatable).  RATE tokens per second flow in, up to DEPTH.  A
 * take of N tokens succeeds when the bucket holds at least min(N, DEPTH):
 * a take bigger than the whole bucket (a 10 MB message through a 1 MB/s byte
 * bucket) waits for a full bucket and then leaves it in debt, so the long-run
 * rate still holds.  A rate <= 0 means unlimited: every take succeeds.
 */
struct drain_bucket {
	int64_t rate_u;               /* micro-tokens per ms; <= 0: unlimited */
	int64_t depth_u;              /* capacity in micro-tokens */
	int64_t tokens_u;             /* may be negative (debt) */
	int64_t last_ms;              /* time of the last refill */
};

/* Start with a full bucket at NOW. */
void drain_bucket_init(struct drain_bucket *b, double rate, double depth,
    int64_t now);
/* Change rate and depth at NOW: tokens earned so far are credited at the old
 * rate first, then clipped to the new depth (so lowering takes effect at once
 * and raising never hands out a burst that was not earned). */
void drain_bucket_set(struct drain_bucket *b, double rate, double depth,
    int64_t now);
/* Credit the tokens earned since the last refill. */
void drain_bucket_refill(struct drain_bucket *b, int64_t now);
/* Refill, then take N tokens if allowed (see above).  Returns true if taken. */
bool drain_bucket_take(struct drain_bucket *b, double n, int64_t now);
/* Milliseconds from NOW until a take of N would succeed; 0 = now. */
int64_t drain_bucket_wait_ms(const struct drain_bucket *b, double n,
    int64_t now);
/* Tokens held at NOW (for tests and status; may be negative). */
double drain_bucket_tokens(const struct drain_bucket *b, int64_t now);

/* ---- ramp -------------------------------------------------------------- */

/*
 * The limit ELAPSED_MS after the primary came up: a straight line from
 * INITIAL to RATE over RAMP_MS, then RATE.  Linear because it is easy to
 * predict from the config ("half way through drain_ramp we are at half
 * speed") and because the AIMD loop, not the ramp, reacts to trouble.
 * INITIAL >= RATE or RAMP_MS == 0 means no ramp; ELAPSED_MS < 0 counts as 0.
 */
double drain_ramp_limit(double initial, double rate, uint64_t ramp_ms,
    int64_t elapsed_ms);

/* ---- AIMD -------------------------------------------------------------- */

/* Reply latency must exceed this many times the baseline to count as a rise, */
#define DRAIN_AIMD_LATENCY_FACTOR 3.0
/* and exceed the baseline by at least this much (ms), so loopback noise
 * (1 ms -> 3 ms) never cuts. */
#define DRAIN_AIMD_LATENCY_MARGIN_MS 50.0
/* Replies used to seed the baseline before latency can trigger a cut. */
#define DRAIN_AIMD_SEED_SAMPLES 5
/*
 * A cut multiplies the effective limit by 1 - the share of 4xx among the
 * replies since the previous cut (a primary that takes R msg/s of our x
 * refuses (x - R) / x of them, so x * (1 - share) is R), clipped to
 * [DRAIN_AIMD_DECREASE, DRAIN_AIMD_DECREASE_MIN]: at least a 10 % cut, at
 * most a halving (which is also what a timeout or a latency rise cuts, and
 * what a 4xx with no success since the last cut cuts).
 */
#define DRAIN_AIMD_DECREASE 0.5
#define DRAIN_AIMD_DECREASE_MIN 0.9
/* A stretch of this long (ms) with successes and no 4xx makes the limit in
 * force at its start the "last good rate": the next cut does not go below
 * it (once: a cut at that floor lowers it, so a primary that has really
 * slowed down is followed). */
#define DRAIN_AIMD_GOOD_MS 3000
/* Between this fraction of the rate at which trouble last began and that
 * rate divided by it, the limit rises DRAIN_AIMD_GENTLE times slower: it
 * probes upward gently where it knows the primary's limit is, and quickly
 * where it is far below or already well beyond it. */
#define DRAIN_AIMD_NEAR 0.85
#define DRAIN_AIMD_GENTLE 8.0
/* After a cut, further trouble is ignored for this long (ms): one pipelined
 * batch answered 4xx is one cut, not eight. */
#define DRAIN_AIMD_COOLDOWN_MS 2000
/* The limit never drops below this (msg/s), or below drain_rate if lower. */
#define DRAIN_AIMD_FLOOR 0.5
/* Additive increase per second of success: drain_rate / 20, at least 0.5. */
#define DRAIN_AIMD_INCREASE_DIVISOR 20.0
#define DRAIN_AIMD_INCREASE_MIN 0.5

struct drain_aimd {
	double rate;                  /* drain_rate: the ceiling */
	double value;                 /* current AIMD limit, msg/s */
	int64_t cut_ms;               /* time of the last cut, or INT64_MIN */
	int64_t raise_ms;             /* success is credited from here on */
	double baseline_ms;           /* slow EWMA of reply latency */
	double fast_ms;               /* fast EWMA of reply latency */
	unsigned samples;             /* latency samples seen since reset */
	unsigned cuts;                /* cuts since init, for status/tests */
	unsigned ok_n, temp_n;        /* replies since the last cut or reset */
	double trouble;               /* the limit a 4xx last cut from; 0 none */
	double good;                  /* the last good rate (floor); 0 none */
	int64_t stretch_ms;           /* start of the current 4xx-free stretch */
	double stretch_value;         /* the limit at that start */
};

/* Start uncut (value = RATE) with no latency history. */
void drain_aimd_init(struct drain_aimd *a, double rate, int64_t now);
/* Forget latency history and cuts (after down -> up: a new start). */
void drain_aimd_reset(struct drain_aimd *a, int64_t now);
/* drain_rate changed: an uncut limit follows the new rate, a cut one is
 * clipped to it. */
void drain_aimd_set_rate(struct drain_aimd *a, double rate);
/*
 * Events.  CEILING is the limit in force without AIMD (the ramp's value at
 * NOW): a cut lowers min(value, CEILING), since cutting a value the ramp
 * already keeps lower would change nothing.  Each returns true if the limit
 * was cut by this event.
 *   ok:       a delivery was answered 2xx after LATENCY_MS (time from the
 *             end of DATA to the reply); may raise the limit, or halve it
 *             when latency rose well above the baseline.
 *   tempfail: a 4xx reply: a cut by the 4xx share (see
 *             DRAIN_AIMD_DECREASE_MIN), not below the last good rate.
 *   timeout:  the primary did not answer in time: a halving.
 */
bool drain_aimd_ok(struct drain_aimd *a, double latency_ms, double ceiling,
    int64_t now);
bool drain_aimd_tempfail(struct drain_aimd *a, double ceiling, int64_t now);
bool drain_aimd_timeout(struct drain_aimd *a, double ceiling, int64_t now);
double drain_aimd_value(const struct drain_aimd *a);

/* ---- the per-tenant rate policy: ramp x AIMD x buckets ----------------- */

struct drain_policy_params {
	double rate;                  /* drain_rate, msg/s, > 0 */
	double initial_rate;          /* drain_initial_rate */
	double burst;                 /* drain_burst; 0 = the current limit */
	uint64_t bandwidth;           /* drain_bandwidth, bytes/s; 0 = unlimited */
	uint64_t ramp_ms;             /* drain_ramp */
};

struct drain_policy {
	struct drain_policy_params params;
	int64_t up_ms;                /* start of the current ramp */
	struct drain_aimd aimd;
	struct drain_bucket msgs;     /* follows drain_policy_limit() */
	struct drain_bucket bytes;    /* drain_bandwidth */
};

/*
 * Initialise with the ramp starting at NOW.  The message bucket's depth is
 * params->burst, or one second's worth of the current limit when burst is 0,
 * and never less than one message (else it could never release one).  So in
 * any 1-second window at most drain_rate + depth messages are released.
 */
void drain_policy_init(struct drain_policy *p,
    const struct drain_policy_params *params, int64_t now);
/* New settings (reload or mxspoolctl set) take effect at NOW; the ramp keeps
 * its start time. */
void drain_policy_configure(struct drain_policy *p,
    const struct drain_policy_params *params, int64_t now);
/* The primary went up (from down or unknown): start the ramp again at NOW
 * and forget AIMD history.  Call it on every transition into UP. */
void drain_policy_restart(struct drain_policy *p, int64_t now);
/* The limit in force at NOW, msg/s: min(ramp, AIMD), never above drain_rate
 * and never below min(drain_rate, DRAIN_AIMD_FLOOR) (so an initial rate of
 * 0 still lets mail out). */
double drain_policy_limit(const struct drain_policy *p, int64_t now);
/* May a message of SIZE bytes leave at NOW?  Takes one message token and
 * SIZE byte tokens together, or nothing. */
bool drain_policy_take(struct drain_policy *p, uint64_t size, int64_t now);
/* Milliseconds until drain_policy_take(SIZE) would succeed; 0 = now. */
int64_t drain_policy_wait_ms(const struct drain_policy *p, uint64_t size,
    int64_t now);
/* Feedback from deliveries (see drain_aimd_*); true when the limit was cut,
 * which the caller logs as a rate-limit change. */
bool drain_policy_ok(struct drain_policy *p, double latency_ms, int64_t now);
bool drain_policy_tempfail(struct drain_policy *p, int64_t now);
bool drain_policy_timeout(struct drain_policy *p, int64_t now);

/* ---- retries, lifetime, delay warnings ---------------------------------- */

#define DRAIN_BACKOFF_MIN_MS   (60 * 1000)        /* 1 minute */
#define DRAIN_BACKOFF_MAX_MS   (60 * 60 * 1000)   /* 1 hour */
#define DRAIN_BACKOFF_JITTER   0.10               /* +-10 % */

/*
 * When to try a recipient again after its ATTEMPTS-th failed attempt
 * (1 = first failure): 1 min, doubling, capped at 1 h, then scaled by
 * 1 + JITTER * 0.10 where JITTER is a random value in [-1, 1] supplied by
 * the caller (0 = no jitter), so that recipients deferred together do not
 * come back together.  ATTEMPTS 0 counts as 1.  Returns NOW + delay.
 */
int64_t drain_backoff_next(unsigned attempts, int64_t now, double jitter);

/* While the primary is up, a message answered 4xx this many times in a
 * row is tried again at once (under the rate limit); the back-off starts
 * with the next deferral. */
#define DRAIN_RETRY_FAST 2

/*
 * When to try a message again after its DEFERRALS-th deferral in a row
 * (1 = the first): while the primary is UP and DEFERRALS <=
 * DRAIN_RETRY_FAST, at NOW (it goes back near the front of the queue, and
 * the rate limit decides when it leaves: a 4xx from a primary that limits
 * our rate is no reason to wait a minute); after that, or while the
 * primary is not up, drain_backoff_next() counting from the first deferral
 * beyond the fast ones (1 min, 2 min, ... 1 h).
 */
int64_t drain_retry_next(unsigned deferrals, bool primary_up, int64_t now,
    double jitter);

/*
 * Queue lifetime: true once NOW - ARRIVAL >= LIFETIME_MS.  Both times are on
 * the same clock (wall clock: arrival comes from the spool).  A lifetime of 0
 * means "one attempt, no retries", as in Postfix.
 */
bool drain_expired(int64_t arrival, int64_t now, uint64_t lifetime_ms);
/* A delay warning is due once the message is DELAY_WARNING_MS old, unless it
 * was already sent or delay_warning is 0 (off). */
bool drain_delay_warning_due(int64_t arrival, int64_t now,
    uint64_t delay_warning_ms, bool already_sent);

/* ---- connections: the concurrency feedback ----------------------------- */

/*
 * How many connections to the primary the drain may hold open: between 1
 * and drain_concurrency, driven by what the primary says, as Postfix's
 * qmgr does for a destination.  A session refused (a 421 at or after the
 * greeting, or a refused connect) while other sessions to the same primary
 * work is a concurrency signal, not an outage: the limit is cut to
 * max(1, WORKING, limit * DRAIN_CONC_DECREASE), WORKING being the other
 * sessions that were greeted and have not failed: those are kept, since
 * they prove what the primary takes.  A session opened before the last cut
 * was counted by that cut: its refusal changes nothing (one burst of
 * refusals is one cut).  After DRAIN_CONC_RAISE_MS of deliveries without a
 * refusal, with every allowed connection in use, the limit rises by one,
 * up to drain_concurrency (additive increase).
 */
#define DRAIN_CONC_DECREASE 0.5
#define DRAIN_CONC_RAISE_MS 5000

enum drain_conc_change {
	DRAIN_CONC_SAME,
	DRAIN_CONC_CUT,
	DRAIN_CONC_RAISED,
};

struct drain_conc {
	unsigned max;                 /* drain_concurrency (>= 1) */
	unsigned limit;               /* connections allowed now, 1..max */
	int64_t changed_ms;           /* last cut, raise or (re)configuration */
	int64_t cut_ms;               /* last cut, INT64_MIN: none */
	unsigned cuts;                /* for tests */
};

/* LIMIT = MAX (0 counts as 1), nothing cut. */
void drain_conc_init(struct drain_conc *c, unsigned max, int64_t now);
/* drain_concurrency changed: an uncut limit follows it; a cut one is
 * clipped to it. */
void drain_conc_set_max(struct drain_conc *c, unsigned max, int64_t now);
/* A session opened at OPENED_MS was refused while WORKING other sessions
 * work (see above).  Returns DRAIN_CONC_CUT or DRAIN_CONC_SAME. */
enum drain_conc_change drain_conc_refused(struct drain_conc *c,
    unsigned working, int64_t opened_ms, int64_t now);
/* A delivery succeeded with LIVE sessions open.  Returns
 * DRAIN_CONC_RAISED or DRAIN_CONC_SAME. */
enum drain_conc_change drain_conc_ok(struct drain_conc *c, unsigned live,
    int64_t now);
unsigned drain_conc_limit(const struct drain_conc *c);

/* ---- the primary's state ------------------------------------------------ */

enum drain_primary_state {
	DRAIN_PRIMARY_UNKNOWN,        /* since start, until a probe tells */
	DRAIN_PRIMARY_DOWN,
	DRAIN_PRIMARY_UP,
};

enum drain_primary_event {
	DRAIN_EV_PROBE_OK,            /* 220, EHLO and QUIT all fine */
	DRAIN_EV_PROBE_FAIL,          /* probe could not connect / bad reply */
	DRAIN_EV_DELIVERY_FAIL,       /* connect failure, timeout or 421 while
	                               * delivering: down at once */
};

struct drain_primary {
	enum drain_primary_state state;
	unsigned good;                /* consecutive good probes */
	unsigned up_after;            /* probe_up_after (>= 1) */
	uint64_t interval_ms;         /* probe_interval */
	int64_t next_ms;              /* next probe due; INT64_MAX while up */
};

/* State UNKNOWN with the first probe due at NOW.  UP_AFTER 0 counts as 1. */
void drain_primary_init(struct drain_primary *pr, unsigned up_after,
    uint64_t interval_ms, int64_t now);
/* New probe_up_after / probe_interval; a pending probe is not delayed by a
 * longer interval beyond NOW + the new interval. */
void drain_primary_configure(struct drain_primary *pr, unsigned up_after,
    uint64_t interval_ms, int64_t now);
/*
 * Feed one event.  Returns true if the state changed; the caller logs it and,
 * on a change to UP, calls drain_policy_restart().  Probes are due every
 * probe_interval while not UP, and not at all while UP (deliveries tell).
 */
bool drain_primary_event(struct drain_primary *pr, enum drain_primary_event ev,
    int64_t now);
/* ETRN or mxspoolctl flush: make the next probe due at NOW (no effect while
 * UP: the queue is being drained already). */
void drain_primary_probe_now(struct drain_primary *pr, int64_t now);
bool drain_primary_probe_due(const struct drain_primary *pr, int64_t now);
/* Next probe time, INT64_MAX while UP. */
int64_t drain_primary_next_probe(const struct drain_primary *pr);
enum drain_primary_state drain_primary_get(const struct drain_primary *pr);
/* "unknown", "down", "up": the status JSON's primary_state. */
const char *drain_primary_state_name(enum drain_primary_state s);

/* ---- rate meter and ETA ------------------------------------------------- */

#define DRAIN_METER_SECONDS 10

/* Messages delivered per one-second slot, for the last 10 seconds. */
struct drain_meter {
	int64_t start_ms;             /* meter created: short windows at start */
	int64_t sec[DRAIN_METER_SECONDS];
	uint64_t count[DRAIN_METER_SECONDS];
};

void drain_meter_init(struct drain_meter *m, int64_t now);
/* N messages were delivered at NOW. */
void drain_meter_add(struct drain_meter *m, uint64_t n, int64_t now);
/* Messages per second over the last 10 s (fewer right after init, but never
 * a window shorter than 1 s): status JSON's drain_rate. */
double drain_meter_rate(const struct drain_meter *m, int64_t now);

/*
 * Estimated seconds until QUEUED messages are gone.  DRAINING says the
 * primary is up and the tenant not held.  Returns false (JSON null) when
 * nothing is draining; otherwise stores ceil(QUEUED / rate) in *ETA_S, where
 * rate is the measured rate, or the current LIMIT while nothing has been
 * measured yet (just after the primary came up).  An empty queue is 0.
 */
bool drain_eta(uint64_t queued, double measured, double limit, bool draining,
    int64_t *eta_s);

#endif
