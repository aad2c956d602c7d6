/*
 * drain_internal.h - what the three files of the drain share, and nothing
 * the rest of the relay may use (the public interface is mxspool/drain.h).
 *
 *   drain.c         the per-tenant scheduler: probe state, rate limit,
 *                   delivery connections, jobs and their retries; the
 *                   public API except drain_bounce().
 *   drain_target.c  where mail goes: "primary = host[:port], ..." or
 *                   "primary = mx" resolved into addresses, our own
 *                   addresses dropped; which destination a recipient's
 *                   mail goes to; also where a DSN goes.
 *   drain_bounce.c  DSNs: the bounce after a 5xx or expiry, the delay
 *                   warning, the operator's "mxspoolctl bounce".
 *   drain_age.c     the clock: once a second per tenant, the expiry and
 *                   delay-notice walk (spool_walk_aged), up or down, held
 *                   or not; and the primary's capabilities (spool_set_caps).
 *
 * Names shared between these files carry a drain__ prefix (STYLE 2); each
 * file's own helpers are static.  The structs are here because all three
 * files walk them; only the file that owns a field changes it:
 *   struct drain, struct drain_tenant, struct drain_conn: drain.c (the
 *     bounce path reads them, drain_target.c reads the config and the self
 *     addresses and fills struct drain_target arrays);
 *   struct drain_job: drain.c, except the bounce and fate lists and dsn,
 *     which drain_bounce.c fills while a DSN is under way;
 *   struct drain_dsn and struct drain_resolve: opaque outside their file.
 *
 * Everything runs on the loop thread.  A job is reference counted (see
 * drain.c): every function here that starts asynchronous work on a job
 * takes its own reference and says where it is dropped.
 */
#ifndef MXSPOOL_DRAIN_INTERNAL_H
#define MXSPOOL_DRAIN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/drain.h"
#include "mxspool/drain_policy.h"
#include "mxspool/dsn.h"
#include "mxspool/smtp_client.h"
#include "mxspool/spool.h"

/* Probes and connects do not wait the full smtp_timeout (5 min). */
#define DRAIN_PROBE_TIMEOUT_MS   (30 * 1000)
#define DRAIN_CONNECT_TIMEOUT_MS (30 * 1000)

/* One address to connect to, with the name it was found under. */
struct drain_target {
	struct sockaddr_storage addr;   /* port included */
	char host[CONFIG_HOST_MAX + 1];
};

/* The tenant's drain settings: the config's, or changed by "set". */
struct drain_settings {
	double rate, initial_rate, burst;
	uint64_t bandwidth;
	unsigned concurrency;
	uint64_t ramp_ms;
	unsigned mpc;                 /* messages per connection */
	uint64_t probe_interval_ms;
	unsigned probe_up_after;
};

struct drain_resolve;               /* drain_target.c */
struct drain_dsn;                   /* drain_bounce.c */
struct drain_tenant;
struct drain_job;

/*
 * A destination: one primary with its own addresses and probe state.  A
 * tenant has one (its listed hosts, or the MX of its only domain), or
 * with "primary = mx" one per domain, so that each message goes to the MX
 * of its recipients' domain and a domain whose MX is down does not take
 * the others down with it.
 */
struct drain_dest {
	struct drain_tenant *t;
	size_t idx;                   /* in t->dests */
	char domain[CONFIG_HOST_MAX + 1];  /* primary = mx: the domain */
	struct drain_primary pr;
	struct drain_target *targets;
	size_t ntargets;
	int64_t targets_mono;
	struct drain_resolve *res;
	bool res_for_probe;
	struct smtp_client *probe;
	size_t probe_idx;
	struct drain_target probe_tg;
	char probe_why[256];
	char probe_last[256];         /* the last probe's end, for watch */
	struct drain_dest *alias;     /* same addresses as this one, which
	                               * stands for it (dest_alias()); NULL */
};

/* A delivery connection to the primary. */
struct drain_conn {
	struct drain_conn *next;
	struct drain_tenant *t;
	struct drain_dest *ds;        /* where it is connected */
	struct smtp_client *c;
	size_t idx;                   /* target in use */
	struct drain_target tg;       /* a copy: a reload may swap targets */
	struct drain_job *job;        /* assigned (loading or sending) */
	unsigned sent;                /* transactions (MAIL commands) so far */
	unsigned mail_max;            /* the primary's RFC 9422 MAILMAX; 0 none */
	unsigned rcpt_max;            /* and its RCPTMAX; 0 none */
	int64_t opened_mono;          /* when it was opened (concurrency) */
	bool leased;                  /* holds a connection lease of the gate */
	bool ready, quitting, failed;
};

/* One recipient's fate in this attempt. */
struct drain_fate {
	size_t env;                   /* index in the envelope */
	struct smtp_client_reply reply;
};

/* What a job is for. */
enum drain_job_kind {
	DRAIN_JOB_DELIVER,            /* the scheduler's: to the primary */
	DRAIN_JOB_ADMIN,              /* mxspoolctl bounce: fail them all */
	DRAIN_JOB_EXPIRE,             /* the walk: past queue_lifetime */
	DRAIN_JOB_WARN,               /* the walk: the one delay notice */
};

/* One message being delivered or bounced. */
struct drain_job {
	struct drain_job *next;
	struct drain_tenant *t;
	spool_qid qid;
	char qids[SPOOL_QID_STRLEN + 1];
	struct spool_msg *msg;
	struct drain_conn *conn;
	struct drain_dest *ds;        /* DELIVER: its recipients' destination */
	unsigned refs;
	int64_t start_mono;
	bool claimed;                 /* the claim is ours to settle */
	bool settled;                 /* deferred, released or all done */
	bool write_failed;
	bool admin_bounce;            /* mxspoolctl bounce */
	enum drain_job_kind kind;
	const char *bounce_reason;    /* log: "reply", "expired", "postmaster" */
	char why[320];                /* EXPIRE / WARN: the DSN's diagnostic */
	const char *dsn_how;          /* "sent", "none", "refused", ... */
	char relay[CONFIG_HOST_MAX + 80];
	/* the message as handed to smtp_client: recipients crcpt[off ..
	 * off + cm.nrcpt) in the transaction under way, of ncrcpt pending
	 * (more than one transaction when the primary has an RCPTMAX) */
	struct smtp_client_msg cm;
	struct smtp_client_rcpt *crcpt;
	size_t *map;                  /* crcpt index -> envelope index */
	size_t ncrcpt, off;
	bool counted;                 /* the meter has counted it */
	bool routing;                 /* counted in t->nrouting */
	bool lease;                   /* a gate's connection lease for the
	                               * connection job_route() may open */
	bool other_dest;              /* recipients of another destination are
	                               * left pending (released at the end) */
	/* outcome lists */
	struct drain_fate *bounce, *temp;
	size_t nbounce, ntemp;
	bool leftover;                /* session failure: release */
	struct drain_dsn *dsn;        /* a DSN under way, or NULL */
};

struct drain_tenant {
	struct drain_tenant *next;
	struct drain *d;
	char name[CONFIG_TENANT_NAME_MAX + 1];
	bool primary_mx;
	struct config_hostport *hosts;
	size_t nhosts;
	char **domains;               /* primary = mx: a copy of the config's */
	size_t ndomains;
	struct drain_settings cfgset, set;   /* from the config; in force */
	struct drain_dest *dests;     /* >= 1 (see struct drain_dest) */
	size_t ndests;
	struct drain_dest *last_probe;  /* the one probed last, for status */
	unsigned nrouting;            /* DELIVER jobs loading, not yet routed */
	struct drain_policy pol;
	struct drain_meter meter;
	uv_timer_t timer;
	bool timer_open;
	int64_t up_mono;              /* when a primary last came up (none was) */
	uint64_t delivered_up;        /* recipients delivered since then */
	struct drain_conn *conns;
	unsigned nconns;
	struct drain_conc conc;       /* connections allowed now (feedback) */
	char limit_reason[200];       /* why conc last changed, for status */
	int64_t conc_ok_mono;         /* the last successful delivery */
	bool conc_grace_used;         /* see tenant_session_failed() */
	struct drain_job *jobs;
	unsigned njobs;
	double logged_limit;
	/* The tenant's own queue_lifetime / delay_warning (or [server]'s). */
	uint64_t queue_lifetime_ms, delay_warning_ms;
	/* drain_age.c: the once-a-second walk and its DSN jobs. */
	uv_timer_t age_timer;
	bool age_open;
	unsigned nage;                /* EXPIRE / WARN jobs alive */
	unsigned age_started;         /* started in this second */
	bool age_more;                /* the walk stopped at a limit */
	int64_t down_since_ms;        /* wall clock; 0 = not known to be down */
	char down_why[256];           /* the last failure, for expiry DSNs */
	bool removed;
	bool removing;                /* inside tenant_remove(): keep t */
};

struct drain {
	uv_loop_t *loop;
	struct spool *spool;
	struct dns *dns;              /* the relay's resolver, not ours */
	struct stats *stats;
	int64_t (*now_ms)(void);      /* wall clock (deps, or util_now_ms) */
	uint64_t age_tick_ms;         /* the walk's period (deps, or 1 s) */
	void (*on_delivered)(void *arg, const char *tenant, const char *rcpt);
	void *hook_arg;               /* deps: for on_delivered */
	const struct drain_gate *gate;  /* deps' shared budget, or NULL */
	const struct config *cfg;     /* valid until the next apply_config */
	struct tls_ctx *tls;          /* client context, or NULL: not ours */
	struct drain_tenant *tenants;
	struct sockaddr_storage *self;
	size_t nself;
	bool closing;
	void (*done)(void *arg);
	void *done_arg;
};

/* ---- drain.c: shared helpers and the job's steps ------------------------ */

/* The wall clock the drain runs on (spool times, expiry, DSN dates). */
int64_t drain__now(const struct drain *d);
/* 64 random bits (getrandom, or a hrtime fallback): DSN nonces, jitter. */
uint64_t drain__random(void);
/* "250 2.0.0 text" on one line, for logs and DSN diagnostics. */
void drain__reply_line(const struct smtp_client_reply *rp, char *buf,
    size_t len);
/* Session options for TG under D's config and TLS context: TIMEOUT_MS per
 * reply, CONNECT_MS to connect.  O borrows TG; TG must outlive the session. */
void drain__client_options(struct drain *d, const struct drain_target *tg,
    uint64_t timeout_ms, uint64_t connect_ms, struct smtp_client_options *o);
struct drain_tenant *drain__tenant_find(struct drain *d, const char *name);
/* Start a job for QID: on connection CN (NULL: an operator bounce, which
 * fails every pending recipient as soon as the message is loaded).
 * CLAIMED: the caller claimed QID and the job settles the claim.  Returns
 * 0 or a spool status; on failure nothing is left behind (a claim is
 * released). */
int drain__job_start(struct drain_tenant *t, spool_qid qid,
    struct drain_conn *cn, bool claimed, enum drain_job_kind kind);
/* Some destination of T is up (deliveries may go). */
bool drain__tenant_up(const struct drain_tenant *t);
/* T's job for QID, or NULL. */
struct drain_job *drain__job_find(struct drain_tenant *t, spool_qid qid);
/* Drop one reference; the last frees the job and runs the scheduler. */
void drain__job_unref(struct drain_job *j);
/* Record recipient ENV's final state; the job holds a reference until the
 * write calls back (a failed write makes the job release its claim). */
void drain__job_mark(struct drain_job *j, size_t env,
    enum spool_rcpt_state st);
/* Append ENV's fate with reply RP to *ARR (allocated with CAP slots on
 * first use).  Returns 0, or -1 when out of memory. */
int drain__fate_add(struct drain_fate **arr, size_t *n, size_t cap,
    size_t env, const struct smtp_client_reply *rp);
/* The last step of every job: j->temp deferred with back-off, or the claim
 * left for job_free() to release, or the message finished. */
void drain__job_retry(struct drain_job *j);

/* ---- drain_target.c: where mail goes ------------------------------------ */

/* The targets found (CB owns T, free() it; may be NULL with N 0); STATUS is
 * a dns status, WHY says what failed in words. */
typedef void (*drain__resolve_cb)(void *arg, int status, const char *why,
    struct drain_target *t, size_t n);
/*
 * Resolve HOSTS in order (port 0: MX_PORT), or with HOSTS NULL the MX of
 * DOMAIN: the hosts preferred over us (dns_select_primaries), on MX_PORT.
 * Addresses that are D's own (drain__self_collect) are dropped.  CB runs
 * exactly once, later, unless the resolution is cancelled.  Returns NULL
 * when nothing could be started: CB then never runs.
 */
struct drain_resolve *drain__resolve_start(struct drain *d,
    const struct config_hostport *hosts, size_t nhosts, const char *domain,
    uint16_t mx_port, drain__resolve_cb cb, void *arg);
/* With primary = mx and several domains: the destination of a recipient
 * ADDR (its domain's, or the one that stands for it), else T's only one. */
struct drain_dest *drain__dest_for(struct drain_tenant *t, const char *addr);
/* DS has (new) addresses: it becomes an alias of another destination of
 * its tenant with the same addresses, or its own again. */
void drain__dest_alias(struct drain_dest *ds);
/* Drop pending lookups and free RES (NULL is fine); CB never runs. */
void drain__resolve_cancel(struct drain_resolve *res);
/* Recompute D's own addresses from cfg->listen (wildcards expanded to the
 * local interfaces), for self detection. */
void drain__self_collect(struct drain *d);
/* "host[addr]:port" for logs. */
void drain__target_name(const struct drain_target *tg, char *buf, size_t len);

/* ---- drain_bounce.c: DSNs ----------------------------------------------- */

/* The recipients' outcomes are sorted into j->bounce and j->temp: send the
 * bounce for j->bounce (if any), then perhaps a delay warning for j->temp,
 * and end with drain__job_retry(). */
void drain__job_settle(struct drain_job *j);
/* Every recipient in j->cm fails with our own ENH and REASON (expiry, the
 * operator); then as drain__job_settle(). */
void drain__job_fail_all(struct drain_job *j, const char *enh,
    const char *reason);
/* A DRAIN_JOB_WARN job's message is loaded: send the delay notice for
 * its pending recipients (j->why as diagnostic), then drain__job_retry(),
 * which leaves the message as it is. */
void drain__job_warn(struct drain_job *j);
/* The tenant goes away: stop J's DSN, if one is under way.  It ends as
 * "try again later", possibly from inside this call. */
void drain__dsn_abort(struct drain_job *j);

/* ---- drain_age.c: the clock and the primary's capabilities ------------- */

/* Open T's 1 s walk timer (0, or a libuv error). */
int drain__age_init(struct drain_tenant *t);
/* Close it; drain_tenant_maybe_free() runs once it is closed. */
void drain__age_close(struct drain_tenant *t, uv_close_cb cb);
/* An EXPIRE / WARN job of T ended: walk again soon if it stopped early. */
void drain__age_job_done(struct drain_tenant *t);
/* The DSN diagnostic for a message of T found EXPIRED (or late) now:
 * "primary unreachable since <date> (<last failure>)" while it is down. */
void drain__age_reason(struct drain_tenant *t, bool expired, char *buf,
    size_t len);
/* The primary answered EHLO with EXT / SIZE_MAX / LIMITS (TLS: STARTTLS
 * was used): keep it in the spool for intake and status. */
void drain__caps_record(struct drain_tenant *t, unsigned ext,
    uint64_t size_max, uint32_t rcpt_max, uint32_t mail_max, bool tls);

#endif
