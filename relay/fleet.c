/*
 * fleet.c - the shared drain budget in Redis (fleet.h): one hiredis
 * connection on the libuv loop, the Lua scripts, the tokens and leases
 * each tenant holds, the degraded fallback, and the fleet view.
 *
 * Redis keys (one fleet per Redis; a standalone server: the publish script
 * reads node keys it is not handed, which Redis Cluster would refuse):
 *   mxspool:tenant:T:bucket  hash: tat, btat (GCRA theoretical arrival
 *                            times in Redis-clock us, messages and bytes),
 *                            lim, cut (the shared AIMD limit after the
 *                            last cut, and when it was cut)
 *   mxspool:tenant:T:conns   zset: connection leases, score = expiry (ms)
 *   mxspool:nodes            zset: node names, score = expiry (ms)
 *   mxspool:node:N           string: the node's figures (fleet_policy.h),
 *                            with a TTL
 * Every time is Redis' own clock (TIME inside the scripts), so the nodes'
 * clocks never need to agree.
 *
 * The shared limit: a cut halves the current value (not below 0.5 msg/s)
 * and stores it with the time; it then grows back by max(0.5, rate / 20)
 * per second, up to drain_rate, as the drain's own AIMD does.  A grant runs
 * the bucket at min(shared limit, the highest own limit (ramp x AIMD) any
 * node asked with in the last 2 s): nodes that ramp up together ramp the
 * fleet, one node that restarts and ramps alone does not hold back the
 * others (its own drain paces it), and a cut by any node (a failed
 * connection, or a drop of its own limit) slows every node at its next
 * grant.
 *
 * Calls are timed: the oldest unanswered call older than FLEET_CALL_MS,
 * or a connect that takes longer than FLEET_CONNECT_MS, drops the
 * connection; reconnects back off from 100 ms to 5 s.  While there is no
 * connection the node is degraded: fleet_policy's fallback paces it alone.
 * Nothing here blocks: the address is an IP literal (config.c insists), so
 * hiredis' connect does not resolve.
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>

#include "mxspool/config.h"
#include "mxspool/fleet.h"
#include "mxspool/log.h"
#include "mxspool/util.h"

#define FLEET_TICK_MS        100      /* housekeeping period */
#define FLEET_CALL_MS        1000     /* an answer later than this: down */
#define FLEET_CONNECT_MS     2000
#define FLEET_PUBLISH_MS     1000
#define FLEET_NODE_TTL_MS    5000     /* a node silent this long is gone */
#define FLEET_LEASE_TTL_MS   10000    /* a dead node's leases last this */
#define FLEET_RENEW_MS       3000
#define FLEET_LEASE_IDLE_MS  1000     /* an unused lease goes back then */
#define FLEET_WAKE_MS        500      /* drain's sleep waiting for a lease */
#define FLEET_POLL_MS        10       /* and for a grant (asked locally) */
#define FLEET_LEASES_MAX     64       /* per tenant and node */
#define FLEET_GOODBYE_MS     500      /* a stop waits this long for Redis */

enum fleet_script { FS_GRANT, FS_CUT, FS_LEASE, FS_RENEW, FS_PUBLISH, FS__N };

static const char *const fleet_lua[FS__N] = {
	/* GRANT: KEYS bucket; ARGV want rate ceiling depth want_bytes
	 * bandwidth.  Returns {msgs, bytes, wait_ms, shared_limit}. */
	[FS_GRANT] =
	"local t = redis.call('TIME')\n"
	"local now = t[1] * 1000000 + t[2]\n"
	"local want, rate, ceil = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
	"local depth, wantb, bw = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
	"local v = redis.call('HMGET', KEYS[1], 'tat', 'btat', 'lim', 'cut', 'cmax', 'cts')\n"
	"local tat = tonumber(v[1]) or now\n"
	"local btat = tonumber(v[2]) or now\n"
	"local shared = rate\n"
	"if v[3] then shared = math.min(rate, tonumber(v[3]) +\n"
	"  math.max(0.5, rate / 20) * (now - tonumber(v[4])) / 1e6) end\n"
	"local cm, cts = tonumber(v[5]), tonumber(v[6])\n"
	"if cm == nil or now - cts >= 2000000 or ceil >= cm then cm = ceil cts = now end\n"
	"local T = 1e6 / math.max(math.min(shared, cm), 0.01)\n"
	"if tat < now then tat = now end\n"
	"if btat < now then btat = now end\n"
	"local g, gb, wait = 0, 0, 0\n"
	"if want > 0 then\n"
	"  g = math.min(want, math.floor((now + depth * T - tat) / T))\n"
	"  if g < 1 then g = 0\n"
	"    wait = tat + math.max(1, math.floor(want / 2)) * T - depth * T - now end\n"
	"end\n"
	"if wantb > 0 and bw > 0 and (want == 0 or g > 0) then\n"
	"  gb = math.min(wantb, math.floor((now + 1e6 - btat) * bw / 1e6))\n"
	"  if gb < 1 then gb = 0 g = 0\n"
	"    wait = math.max(wait, btat + math.min(wantb, bw / 10) * 1e6 / bw - 1e6 - now) end\n"
	"end\n"
	"if g > 0 then tat = tat + g * T end\n"
	"if gb > 0 then btat = btat + gb * 1e6 / bw end\n"
	"redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat),\n"
	"  'btat', string.format('%.0f', btat), 'cmax', string.format('%.6f', cm),\n"
	"  'cts', string.format('%.0f', cts))\n"
	"redis.call('PEXPIRE', KEYS[1], 86400000)\n"
	"return {g, gb, math.ceil(math.max(wait, 0) / 1000), string.format('%.3f', shared)}\n",

	/* CUT: KEYS bucket; ARGV rate.  Halves the shared limit unless it was
	 * cut less than 2 s ago (one burst of 421s is one cut).  Returns 1 if
	 * cut. */
	[FS_CUT] =
	"local t = redis.call('TIME')\n"
	"local now = t[1] * 1000000 + t[2]\n"
	"local rate = tonumber(ARGV[1])\n"
	"local v = redis.call('HMGET', KEYS[1], 'lim', 'cut')\n"
	"local shared = rate\n"
	"if v[1] then\n"
	"  if now - tonumber(v[2]) < 2000000 then return 0 end\n"
	"  shared = math.min(rate, tonumber(v[1]) +\n"
	"    math.max(0.5, rate / 20) * (now - tonumber(v[2])) / 1e6)\n"
	"end\n"
	"local nv = math.max(math.min(rate, 0.5), shared * 0.5)\n"
	"redis.call('HSET', KEYS[1], 'lim', string.format('%.6f', nv),\n"
	"  'cut', string.format('%.0f', now))\n"
	"redis.call('PEXPIRE', KEYS[1], 86400000)\n"
	"return 1\n",

	/* LEASE: KEYS conns; ARGV member limit ttl_ms.  Returns 1 if leased. */
	[FS_LEASE] =
	"local t = redis.call('TIME')\n"
	"local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
	"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
	"if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end\n"
	"redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])\n"
	"redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))\n"
	"return 1\n",

	/* RENEW: KEYS conns; ARGV ttl_ms member...  Extends our leases. */
	[FS_RENEW] =
	"local t = redis.call('TIME')\n"
	"local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
	"for i = 2, #ARGV do\n"
	"  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])\n"
	"end\n"
	"redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))\n"
	"return 1\n",

	/* PUBLISH: KEYS nodes, our node key; ARGV node payload ttl_ms.
	 * Returns {now_ms, node, expiry_ms, payload, ...} for live nodes. */
	[FS_PUBLISH] =
	"local t = redis.call('TIME')\n"
	"local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
	"local ttl = tonumber(ARGV[3])\n"
	"redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)\n"
	"redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])\n"
	"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
	"local names = redis.call('ZRANGE', KEYS[1], 0, 63, 'WITHSCORES')\n"
	"local out = {now}\n"
	"for i = 1, #names, 2 do\n"
	"  out[#out + 1] = names[i]\n"
	"  out[#out + 1] = names[i + 1]\n"
	"  out[#out + 1] = redis.call('GET', 'mxspool:node:' .. names[i]) or ''\n"
	"end\n"
	"return out\n",
};

enum fleet_call_kind {
	FC_AUTH, FC_LOAD, FC_GRANT, FC_CUT, FC_LEASE, FC_RENEW, FC_RELEASE,
	FC_PUBLISH,
};

static const char *const fleet_call_names[] = {
	"auth", "script-load", "grant", "cut", "lease", "renew", "release",
	"publish",
};

#define FLEET_ARGV_MAX (4 + FLEET_LEASES_MAX)

/* One call to Redis.  hiredis calls its callback exactly once (with NULL
 * when the connection goes), which frees it. */
struct fleet_call {
	struct fleet_call *prev, *next;   /* f->calls, oldest first */
	struct fleet *f;
	enum fleet_call_kind kind;
	int script;                   /* enum fleet_script, or -1 */
	char tenant[FLEET_TENANT_MAX];
	uint64_t lease;               /* FC_LEASE: the lease's number */
	int64_t sent_mono;
	bool retried;                 /* NOSCRIPT answered: sent again as EVAL */
	int argc;
	const char *argv[FLEET_ARGV_MAX];
	size_t argvlen[FLEET_ARGV_MAX];
	size_t used;
	char buf[FLEET_PAYLOAD_MAX + 1024];
};

struct fleet_tenant {
	struct fleet_tenant *next;
	char name[FLEET_TENANT_MAX];
	struct fleet_ask last;        /* the drain's settings at its last ask */
	double prev_rate, prev_limit; /* for cut detection */
	struct fleet_reservoir res;   /* shared tokens held */
	bool grant_out;
	int64_t retry_mono;           /* no grant call before this */
	int64_t lease_retry_mono;     /* no lease call before this */
	double shared_limit;          /* from the last grant; -1 unknown */
	struct fleet_fallback fb;     /* degraded pace */
	unsigned used;                /* connections open (leased or not) */
	unsigned nheld;               /* leases held in Redis */
	uint64_t held[FLEET_LEASES_MAX];
	bool lease_out;
	int64_t idle_mono;            /* since when a held lease is unused */
	bool cut_out;
};

struct fleet {
	uv_loop_t *loop;
	struct fleet_deps deps;
	char host[CONFIG_HOST_MAX + 1];
	uint16_t port;
	char node[FLEET_NODE_MAX];
	char *password;
	uint64_t nonce;               /* lease names differ across restarts */
	uint64_t lease_seq;

	redisAsyncContext *ac;
	bool connected;               /* onConnect said so */
	bool ok;                      /* connected and answering: not degraded */
	int64_t connect_mono;
	int64_t next_connect_mono;
	uint64_t backoff_ms;
	char sha[FS__N][41];          /* "" until SCRIPT LOAD answered */
	struct fleet_call *calls, *calls_tail;
	char why[160];                /* the last failure, for the log */

	uv_timer_t tick;
	int64_t publish_mono, renew_mono;
	struct fleet_tenant *tenants;

	/* The view: the last PUBLISH answer. */
	unsigned nodes_alive;
	size_t nnodes;
	struct fleet_node_view *nodes;

	bool closing;                 /* fleet_close() was called */
	bool finishing;               /* and the goodbye is over */
	int64_t close_deadline;
	void (*done)(void *);
	void *done_arg;
};

static void fleet_lost(struct fleet *f, const char *why);
static void fleet_close_finish(struct fleet *f);

/* ---- state -------------------------------------------------------------- */

static void
fleet_set_ok(struct fleet *f, bool ok, const char *why)
{
	char q[200];

	if (f->ok == ok)
		return;
	f->ok = ok;
	if (ok) {
		f->backoff_ms = 0;
		log_event(LOG_LEVEL_INFO, "fleet", "state=ok node=%s redis=%s:%u",
		    f->node, f->host, f->port);
	} else {
		log_event(LOG_LEVEL_WARN, "fleet", "state=degraded node=%s redis=%s:%u "
		    "nodes=%u reason=%s note=\"each node drains at drain_rate / nodes\"",
		    f->node, f->host, f->port, f->nodes_alive ? f->nodes_alive : 1,
		    log_quote(q, sizeof(q), why));
	}
	for (struct fleet_tenant *t = f->tenants; t; t = t->next) {
		/* Tokens and leases do not cross a change of regime: the
		 * shared bucket resumes with at most its depth, the fallback
		 * starts with one token. */
		memset(&t->res, 0, sizeof(t->res));
		fleet_fallback_reset(&t->fb);
		t->nheld = 0;
		t->retry_mono = t->lease_retry_mono = 0;
	}
}

double
fleet_limit(const struct fleet *f, const char *tenant, double local)
{
	const struct fleet_tenant *t;
	double l = local;

	for (t = f->tenants; t; t = t->next)
		if (strcmp(t->name, tenant) == 0)
			break;
	if (t == NULL || t->last.rate <= 0)
		return local;
	if (!f->ok)
		l = fleet_fallback_rate(t->last.rate, local, f->nodes_alive);
	else if (t->shared_limit >= 0 && t->shared_limit < local)
		l = t->shared_limit;
	return l;
}

const char *
fleet_state(const struct fleet *f)
{
	return f && f->ok ? "ok" : "degraded";
}

static struct fleet_tenant *
fleet_tenant_get(struct fleet *f, const char *name)
{
	struct fleet_tenant *t;

	for (t = f->tenants; t; t = t->next)
		if (strcmp(t->name, name) == 0)
			return t;
	if (strlen(name) >= sizeof(t->name) || (t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	memcpy(t->name, name, strlen(name) + 1);
	t->shared_limit = -1;
	t->next = f->tenants;
	f->tenants = t;
	return t;
}

static void
fleet_wake(struct fleet *f, const char *tenant)
{
	if (f->deps.wake && !f->closing)
		f->deps.wake(f->deps.arg, tenant);
}

/* ---- calls -------------------------------------------------------------- */

static struct fleet_call *
fleet_call_new(struct fleet *f, enum fleet_call_kind kind, const char *tenant)
{
	struct fleet_call *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->f = f;
	c->kind = kind;
	c->script = -1;
	if (tenant)
		snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
	return c;
}

/* Append one argument (copied into the call's buffer). */
static int
fleet_arg(struct fleet_call *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
fleet_arg(struct fleet_call *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (c->argc >= FLEET_ARGV_MAX || c->used >= sizeof(c->buf))
		return -1;
	va_start(ap, fmt);
	n = vsnprintf(c->buf + c->used, sizeof(c->buf) - c->used, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(c->buf) - c->used)
		return -1;
	c->argv[c->argc] = c->buf + c->used;
	c->argvlen[c->argc] = (size_t)n;
	c->argc++;
	c->used += (size_t)n + 1;
	return 0;
}

/* The start of a script call: EVALSHA sha NKEYS (or EVAL body NKEYS). */
static int
fleet_script_args(struct fleet_call *c, int script, int nkeys)
{
	struct fleet *f = c->f;

	c->script = script;
	if (f->sha[script][0]) {
		c->argv[0] = "EVALSHA";
		c->argv[1] = f->sha[script];
	} else {
		c->argv[0] = "EVAL";
		c->argv[1] = fleet_lua[script];
	}
	c->argvlen[0] = strlen(c->argv[0]);
	c->argvlen[1] = strlen(c->argv[1]);
	c->argc = 2;
	return fleet_arg(c, "%d", nkeys);
}

static void fleet_on_reply(redisAsyncContext *ac, void *r, void *priv);

static void
fleet_call_unlink(struct fleet_call *c)
{
	struct fleet *f = c->f;

	if (c->prev)
		c->prev->next = c->next;
	else if (f->calls == c)
		f->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else if (f->calls_tail == c)
		f->calls_tail = c->prev;
	c->prev = c->next = NULL;
}

/* Send C (ownership passes to hiredis' callback).  -1: not sent, C freed. */
static int
fleet_send(struct fleet_call *c)
{
	struct fleet *f = c->f;

	if (f->ac == NULL || f->finishing || redisAsyncCommandArgv(f->ac,
	    fleet_on_reply, c, c->argc, c->argv, c->argvlen) != REDIS_OK) {
		free(c);
		return -1;
	}
	c->sent_mono = util_mono_ms();
	c->prev = f->calls_tail;
	c->next = NULL;
	if (f->calls_tail)
		f->calls_tail->next = c;
	else
		f->calls = c;
	f->calls_tail = c;
	return 0;
}

/* ---- replies ------------------------------------------------------------ */

static long long
reply_int(const redisReply *r)
{
	if (r == NULL)
		return 0;
	if (r->type == REDIS_REPLY_INTEGER)
		return r->integer;
	if (r->type == REDIS_REPLY_STRING)
		return strtoll(r->str, NULL, 10);
	return 0;
}

static void
fleet_on_grant(struct fleet *f, struct fleet_call *c, const redisReply *r)
{
	struct fleet_tenant *t = fleet_tenant_get(f, c->tenant);
	long long g, gb, wait;

	if (t == NULL)
		return;
	t->grant_out = false;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4)
		return;
	g = reply_int(r->element[0]);
	gb = reply_int(r->element[1]);
	wait = reply_int(r->element[2]);
	if (r->element[3]->type == REDIS_REPLY_STRING)
		t->shared_limit = strtod(r->element[3]->str, NULL);
	if (g > 0)
		t->res.msgs += (unsigned)g;
	if (gb > 0)
		t->res.bytes += (uint64_t)gb;
	if (g > 0 || gb > 0) {
		t->retry_mono = 0;
		fleet_wake(f, t->name);
	} else {
		/* Nothing left: come back when half a batch has accrued. */
		if (wait < 1)
			wait = 1;
		if (wait > 1000)
			wait = 1000;
		t->retry_mono = util_mono_ms() + wait;
	}
}

static void
fleet_on_lease(struct fleet *f, struct fleet_call *c, const redisReply *r)
{
	struct fleet_tenant *t = fleet_tenant_get(f, c->tenant);

	if (t == NULL)
		return;
	t->lease_out = false;
	if (r == NULL || reply_int(r) != 1) {
		/* Every lease of the fleet is in use: try again a bit later. */
		t->lease_retry_mono = util_mono_ms() + 200;
		return;
	}
	if (t->nheld < FLEET_LEASES_MAX && f->ok) {
		t->held[t->nheld++] = c->lease;
		t->idle_mono = util_mono_ms();
		fleet_wake(f, t->name);
	}
}

/* The nodes alive and their figures, from a PUBLISH answer. */
static void
fleet_on_publish(struct fleet *f, const redisReply *r)
{
	struct fleet_node_view *nodes;
	long long now;
	size_t n;

	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1)
		return;
	now = reply_int(r->element[0]);
	n = (r->elements - 1) / 3;
	nodes = calloc(n ? n : 1, sizeof(*nodes));
	if (nodes == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		const redisReply *name = r->element[1 + 3 * i];
		const redisReply *exp = r->element[2 + 3 * i];
		const redisReply *pl = r->element[3 + 3 * i];
		struct fleet_node_view *nv = &nodes[i];
		int k;

		if (name->type == REDIS_REPLY_STRING)
			snprintf(nv->node, sizeof(nv->node), "%s", name->str);
		nv->self = strcmp(nv->node, f->node) == 0;
		nv->age_ms = now - (reply_int(exp) - FLEET_NODE_TTL_MS);
		if (nv->age_ms < 0)
			nv->age_ms = 0;
		k = pl->type == REDIS_REPLY_STRING ? fleet_payload_decode(pl->str,
		    pl->len, nv->tenants, FLEET_FIGURES_MAX) : -1;
		nv->ntenants = k > 0 ? (size_t)k : 0;
	}
	free(f->nodes);
	f->nodes = nodes;
	f->nnodes = n;
	f->nodes_alive = n > 0 ? (unsigned)n : 1;
}

static void
fleet_on_reply(redisAsyncContext *ac, void *rp, void *priv)
{
	struct fleet_call *c = priv;
	struct fleet *f = c->f;
	const redisReply *r = rp;

	fleet_call_unlink(c);
	if (f->closing) {
		free(c);
		return;
	}
	if (r != NULL && r->type == REDIS_REPLY_ERROR) {
		if (c->script >= 0 && !c->retried &&
		    strncmp(r->str, "NOSCRIPT", 8) == 0 && f->ac == ac) {
			/* Redis lost the script (restart, SCRIPT FLUSH): the
			 * body goes along this once, and is loaded again. */
			c->retried = true;
			f->sha[c->script][0] = '\0';
			c->argv[0] = "EVAL";
			c->argv[1] = fleet_lua[c->script];
			c->argvlen[0] = 4;
			c->argvlen[1] = strlen(c->argv[1]);
			(void)fleet_send(c);
			return;
		}
		char q[200];

		snprintf(f->why, sizeof(f->why), "%s: %.140s",
		    fleet_call_names[c->kind], r->str);
		log_event(LOG_LEVEL_WARN, "fleet", "node=%s call=%s error=%s", f->node,
		    fleet_call_names[c->kind], log_quote(q, sizeof(q), r->str));
		r = NULL;
		/* A wrong password, a read-only replica, a full Redis: the
		 * budget cannot be kept there, so degrade and try again after
		 * the back-off (SCRIPT LOAD refused only costs EVAL bodies). */
		if (c->kind != FC_LOAD && c->kind != FC_RELEASE && f->ac == ac)
			fleet_lost(f, f->why);
	}
	if (r != NULL && f->connected && !f->closing)
		fleet_set_ok(f, true, "");
	switch (c->kind) {
	case FC_LOAD:
		/* c->lease holds the script's index for a SCRIPT LOAD. */
		if (r != NULL && r->type == REDIS_REPLY_STRING && r->len == 40 &&
		    c->lease < FS__N)
			memcpy(f->sha[c->lease], r->str, 41);
		break;
	case FC_GRANT:
		fleet_on_grant(f, c, r);
		break;
	case FC_LEASE:
		fleet_on_lease(f, c, r);
		break;
	case FC_CUT: {
		struct fleet_tenant *t = fleet_tenant_get(f, c->tenant);

		if (t)
			t->cut_out = false;
		if (r != NULL && reply_int(r) == 1)
			log_event(LOG_LEVEL_INFO, "fleet", "tenant=%s shared_limit=cut "
			    "node=%s", c->tenant, f->node);
		break;
	}
	case FC_PUBLISH:
		fleet_on_publish(f, r);
		break;
	default:
		break;
	}
	free(c);
}

/* ---- the connection ----------------------------------------------------- */

static void
fleet_on_connect(const redisAsyncContext *ac, int status)
{
	struct fleet *f = ac->data;

	if (f == NULL || f->ac != ac)
		return;
	if (f->closing) {
		f->ac = NULL;        /* hiredis frees it */
		fleet_close_finish(f);
		return;
	}
	if (status != REDIS_OK) {
		/* hiredis frees the context after this returns. */
		snprintf(f->why, sizeof(f->why), "connect: %.140s",
		    ac->errstr[0] ? ac->errstr : "failed");
		f->ac = NULL;
		f->connected = false;
		fleet_lost(f, f->why);
		return;
	}
	f->connected = true;
}

static void
fleet_on_disconnect(const redisAsyncContext *ac, int status)
{
	struct fleet *f = ac->data;

	if (f == NULL || f->ac != ac)
		return;
	if (f->closing) {
		f->ac = NULL;        /* freed by hiredis: the goodbye is written */
		fleet_close_finish(f);
		return;
	}
	snprintf(f->why, sizeof(f->why), "disconnected: %.130s",
	    ac->errstr[0] ? ac->errstr : "closed by the server");
	f->ac = NULL;            /* freed by hiredis */
	f->connected = false;
	fleet_lost(f, f->why);
}

/* The connection is unusable: drop it (pending calls end with NULL),
 * degrade, and reconnect after the back-off. */
static void
fleet_lost(struct fleet *f, const char *why)
{
	redisAsyncContext *ac = f->ac;

	f->ac = NULL;
	f->connected = false;
	if (ac != NULL) {
		ac->data = NULL;
		redisAsyncFree(ac);
	}
	for (int i = 0; i < FS__N; i++)
		f->sha[i][0] = '\0';
	f->backoff_ms = fleet_backoff_next(f->backoff_ms);
	f->next_connect_mono = util_mono_ms() + (int64_t)f->backoff_ms;
	if (f->ok)
		fleet_set_ok(f, false, why);
}

static void
fleet_connect(struct fleet *f)
{
	redisAsyncContext *ac = redisAsyncConnect(f->host, f->port);
	struct fleet_call *c;

	if (ac == NULL || ac->err) {
		snprintf(f->why, sizeof(f->why), "connect: %.140s",
		    ac ? ac->errstr : "out of memory");
		if (ac)
			redisAsyncFree(ac);
		fleet_lost(f, f->why);
		return;
	}
	ac->data = f;
	if (redisLibuvAttach(ac, f->loop) != REDIS_OK) {
		redisAsyncFree(ac);
		fleet_lost(f, "cannot attach to the loop");
		return;
	}
	(void)redisAsyncSetConnectCallback(ac, fleet_on_connect);
	(void)redisAsyncSetDisconnectCallback(ac, fleet_on_disconnect);
	f->ac = ac;
	f->connect_mono = util_mono_ms();
	/* Queued now, written once connected: AUTH first, then the scripts. */
	if (f->password && (c = fleet_call_new(f, FC_AUTH, NULL)) != NULL) {
		if (fleet_arg(c, "AUTH") == 0 && fleet_arg(c, "%s", f->password) == 0)
			(void)fleet_send(c);
		else
			free(c);
	}
	for (int i = 0; i < FS__N; i++) {
		if ((c = fleet_call_new(f, FC_LOAD, NULL)) == NULL)
			continue;
		c->script = i;
		if (fleet_arg(c, "SCRIPT") == 0 && fleet_arg(c, "LOAD") == 0 &&
		    fleet_arg(c, "%s", fleet_lua[i]) == 0) {
			c->script = -1;       /* not an EVAL: never retried */
			c->lease = (uint64_t)i;
			(void)fleet_send(c);
		} else {
			free(c);
		}
	}
}

/* ---- publishing, renewing ----------------------------------------------- */

static void
fleet_publish(struct fleet *f)
{
	struct fleet_figures fig[FLEET_FIGURES_MAX];
	char payload[FLEET_PAYLOAD_MAX];
	struct fleet_call *c;
	size_t n = 0;
	int len;

	if (f->deps.figures)
		n = f->deps.figures(f->deps.arg, fig, FLEET_FIGURES_MAX);
	for (size_t i = 0; i < n; i++) {
		struct fleet_tenant *t = fleet_tenant_get(f, fig[i].tenant);

		fig[i].connections = t ? t->used : 0;
	}
	len = fleet_payload_encode(fig, n, payload, sizeof(payload));
	if (len < 0 || (c = fleet_call_new(f, FC_PUBLISH, NULL)) == NULL)
		return;
	if (fleet_script_args(c, FS_PUBLISH, 2) != 0 ||
	    fleet_arg(c, "mxspool:nodes") != 0 ||
	    fleet_arg(c, "mxspool:node:%s", f->node) != 0 ||
	    fleet_arg(c, "%s", f->node) != 0 ||
	    fleet_arg(c, "%s", payload) != 0 ||
	    fleet_arg(c, "%d", FLEET_NODE_TTL_MS) != 0) {
		free(c);
		return;
	}
	(void)fleet_send(c);
}

static int
fleet_lease_name(struct fleet_call *c, uint64_t lease)
{
	return fleet_arg(c, "%s:%016" PRIx64 ":%" PRIu64, c->f->node,
	    c->f->nonce, lease);
}

static void
fleet_renew(struct fleet *f, struct fleet_tenant *t)
{
	struct fleet_call *c = fleet_call_new(f, FC_RENEW, t->name);
	int rc;

	if (c == NULL)
		return;
	rc = fleet_script_args(c, FS_RENEW, 1);
	rc |= fleet_arg(c, "mxspool:tenant:%s:conns", t->name);
	rc |= fleet_arg(c, "%d", FLEET_LEASE_TTL_MS);
	for (unsigned i = 0; i < t->nheld && rc == 0; i++)
		rc |= fleet_lease_name(c, t->held[i]);
	if (rc != 0) {
		free(c);
		return;
	}
	(void)fleet_send(c);
}

/* Give back the most recent lease of T. */
static void
fleet_release_one(struct fleet *f, struct fleet_tenant *t)
{
	struct fleet_call *c;
	uint64_t lease;

	if (t->nheld == 0)
		return;
	lease = t->held[--t->nheld];
	if (!f->ok || (c = fleet_call_new(f, FC_RELEASE, t->name)) == NULL)
		return;
	if (fleet_arg(c, "ZREM") != 0 ||
	    fleet_arg(c, "mxspool:tenant:%s:conns", t->name) != 0 ||
	    fleet_lease_name(c, lease) != 0) {
		free(c);
		return;
	}
	(void)fleet_send(c);
}

static void
fleet_on_tick(uv_timer_t *h)
{
	struct fleet *f = h->data;
	int64_t now = util_mono_ms();

	if (f->closing) {
		if (now >= f->close_deadline)
			fleet_close_finish(f);   /* Redis did not take the goodbye */
		return;
	}
	if (f->ac == NULL) {
		if (now >= f->next_connect_mono)
			fleet_connect(f);
		return;
	}
	if (!f->connected && now - f->connect_mono > FLEET_CONNECT_MS) {
		fleet_lost(f, "connect timed out");
		return;
	}
	if (f->calls && now - f->calls->sent_mono > FLEET_CALL_MS) {
		fleet_lost(f, "no answer within 1 s");
		return;
	}
	if (!f->connected)
		return;
	if (now - f->publish_mono >= FLEET_PUBLISH_MS) {
		f->publish_mono = now;
		fleet_publish(f);
	}
	for (struct fleet_tenant *t = f->tenants; t; t = t->next) {
		if (t->nheld > t->used && now - t->idle_mono > FLEET_LEASE_IDLE_MS)
			fleet_release_one(f, t);
	}
	if (now - f->renew_mono >= FLEET_RENEW_MS) {
		f->renew_mono = now;
		for (struct fleet_tenant *t = f->tenants; t; t = t->next)
			if (t->nheld > 0)
				fleet_renew(f, t);
	}
}

/* ---- the gate ----------------------------------------------------------- */

static void
fleet_ask_grant(struct fleet *f, struct fleet_tenant *t, unsigned msgs,
    uint64_t bytes)
{
	const struct fleet_ask *a = &t->last;
	struct fleet_call *c = fleet_call_new(f, FC_GRANT, t->name);
	unsigned depth = fleet_batch(a->rate);

	if (c == NULL)
		return;
	/* The bucket's depth is one batch at drain_rate (or drain_burst, when
	 * larger), the same whoever asks, so a node that asks for less (it
	 * is ramping) still finds tokens: the fleet may get ahead of
	 * drain_rate by that much, no more. */
	if (a->burst > depth)
		depth = (unsigned)a->burst;
	if (fleet_script_args(c, FS_GRANT, 1) != 0 ||
	    fleet_arg(c, "mxspool:tenant:%s:bucket", t->name) != 0 ||
	    fleet_arg(c, "%u", msgs) != 0 ||
	    fleet_arg(c, "%.6f", a->rate) != 0 ||
	    fleet_arg(c, "%.6f", a->limit) != 0 ||
	    fleet_arg(c, "%u", depth) != 0 ||
	    fleet_arg(c, "%" PRIu64, bytes) != 0 ||
	    fleet_arg(c, "%" PRIu64, a->bandwidth) != 0) {
		free(c);
		return;
	}
	if (fleet_send(c) == 0)
		t->grant_out = true;
}

static void
fleet_ask_lease(struct fleet *f, struct fleet_tenant *t)
{
	struct fleet_call *c = fleet_call_new(f, FC_LEASE, t->name);

	if (c == NULL)
		return;
	c->lease = ++f->lease_seq;
	if (fleet_script_args(c, FS_LEASE, 1) != 0 ||
	    fleet_arg(c, "mxspool:tenant:%s:conns", t->name) != 0 ||
	    fleet_lease_name(c, c->lease) != 0 ||
	    fleet_arg(c, "%u", t->last.concurrency) != 0 ||
	    fleet_arg(c, "%d", FLEET_LEASE_TTL_MS) != 0) {
		free(c);
		return;
	}
	if (fleet_send(c) == 0)
		t->lease_out = true;
}

static void
fleet_ask_cut(struct fleet *f, struct fleet_tenant *t)
{
	struct fleet_call *c;

	if (!f->ok || t->cut_out || (c = fleet_call_new(f, FC_CUT, t->name)) == NULL)
		return;
	if (fleet_script_args(c, FS_CUT, 1) != 0 ||
	    fleet_arg(c, "mxspool:tenant:%s:bucket", t->name) != 0 ||
	    fleet_arg(c, "%.6f", t->last.rate) != 0) {
		free(c);
		return;
	}
	if (fleet_send(c) == 0)
		t->cut_out = true;
}

/* Degraded: the node's own share of the budget. */
static int64_t
fleet_take_degraded(struct fleet *f, struct fleet_tenant *t,
    const struct fleet_ask *a, int64_t now)
{
	unsigned n = f->nodes_alive ? f->nodes_alive : 1;
	int64_t wait;

	if (a->new_conn && t->used >= fleet_fallback_concurrency(a->concurrency, n))
		return FLEET_WAKE_MS;
	wait = fleet_fallback_take(&t->fb, fleet_fallback_rate(a->rate, a->limit, n),
	    fleet_fallback_bandwidth(a->bandwidth, n), a->size, now);
	if (wait > 0)
		return wait;
	if (a->new_conn)
		t->used++;
	return 0;
}

int64_t
fleet_take(struct fleet *f, const char *tenant, const struct fleet_ask *a)
{
	struct fleet_tenant *t = fleet_tenant_get(f, tenant);
	int64_t now = util_mono_ms();
	bool bytes = a->bandwidth > 0;
	unsigned want_m;
	uint64_t want_b;

	if (t == NULL)
		return 1000;
	if (fleet_limit_cut(t->prev_rate, t->prev_limit, a->rate, a->limit))
		fleet_ask_cut(f, t);
	t->prev_rate = a->rate;
	t->prev_limit = a->limit;
	t->last = *a;
	if (!f->ok)
		return fleet_take_degraded(f, t, a, now);
	if (a->new_conn && t->nheld <= t->used) {
		if (!t->lease_out && now >= t->lease_retry_mono)
			fleet_ask_lease(f, t);
		return FLEET_WAKE_MS;
	}
	if (fleet_reservoir_take(&t->res, a->size, bytes)) {
		if (a->new_conn)
			t->used++;
		if (t->res.msgs == 0 && !t->grant_out)
			fleet_ask_grant(f, t, fleet_batch(a->limit),
			    bytes ? fleet_batch_bytes(a->bandwidth) : 0);
		return 0;
	}
	if (t->grant_out)
		return FLEET_POLL_MS;
	if (now < t->retry_mono)
		return t->retry_mono - now;
	fleet_reservoir_want(&t->res, a->size, fleet_batch(a->limit),
	    fleet_batch_bytes(a->bandwidth), bytes, &want_m, &want_b);
	fleet_ask_grant(f, t, want_m, want_b);
	return FLEET_POLL_MS;
}

void
fleet_conn_done(struct fleet *f, const char *tenant, bool failed)
{
	struct fleet_tenant *t = fleet_tenant_get(f, tenant);

	if (t == NULL)
		return;
	if (t->used > 0)
		t->used--;
	if (t->nheld > t->used)
		fleet_release_one(f, t);
	if (failed && t->last.rate > 0)
		fleet_ask_cut(f, t);
}

/* ---- the view ----------------------------------------------------------- */

static struct fleet_tenant_sum *
fleet_sum_get(struct fleet_view *v, const char *tenant)
{
	for (size_t i = 0; i < v->nsums; i++)
		if (strcmp(v->sums[i].tenant, tenant) == 0)
			return &v->sums[i];
	if (v->nsums == FLEET_FIGURES_MAX)
		return NULL;
	snprintf(v->sums[v->nsums].tenant, FLEET_TENANT_MAX, "%s", tenant);
	v->sums[v->nsums].shared_limit = -1;
	return &v->sums[v->nsums++];
}

int
fleet_view_get(struct fleet *f, struct fleet_view *v)
{
	memset(v, 0, sizeof(*v));
	v->state = fleet_state(f);
	v->node = f->node;
	snprintf(v->redis, sizeof(v->redis), "%s:%u", f->host, f->port);
	v->nodes_alive = f->nodes_alive ? f->nodes_alive : 1;
	v->nodes = calloc(f->nnodes ? f->nnodes : 1, sizeof(*v->nodes));
	v->sums = calloc(FLEET_FIGURES_MAX, sizeof(*v->sums));
	if (v->nodes == NULL || v->sums == NULL) {
		fleet_view_free(v);
		return -1;
	}
	if (f->nnodes)
		memcpy(v->nodes, f->nodes, f->nnodes * sizeof(*v->nodes));
	v->nnodes = f->nnodes;
	for (size_t i = 0; i < v->nnodes; i++) {
		for (size_t k = 0; k < v->nodes[i].ntenants; k++) {
			const struct fleet_figures *fg = &v->nodes[i].tenants[k];
			struct fleet_tenant_sum *s = fleet_sum_get(v, fg->tenant);

			if (s == NULL)
				continue;
			s->nodes++;
			s->queued_messages += fg->queued_messages;
			s->queued_bytes += fg->queued_bytes;
			if (fg->oldest_age_s > s->oldest_age_s)
				s->oldest_age_s = fg->oldest_age_s;
			s->drain_rate += fg->drain_rate;
			s->connections += fg->connections;
		}
	}
	for (size_t i = 0; i < v->nsums; i++) {
		for (struct fleet_tenant *t = f->tenants; t; t = t->next)
			if (strcmp(t->name, v->sums[i].tenant) == 0)
				v->sums[i].shared_limit = t->shared_limit;
	}
	return 0;
}

void
fleet_view_free(struct fleet_view *v)
{
	free(v->nodes);
	free(v->sums);
	v->nodes = NULL;
	v->sums = NULL;
	v->nnodes = v->nsums = 0;
}

/* ---- life --------------------------------------------------------------- */

int
fleet_new(const struct fleet_deps *deps, const struct config *cfg,
    struct fleet **out)
{
	struct fleet *f = calloc(1, sizeof(*f));

	*out = NULL;
	if (f == NULL)
		return -1;
	f->loop = deps->loop;
	f->deps = *deps;
	snprintf(f->host, sizeof(f->host), "%s", cfg->fleet_redis.host);
	f->port = cfg->fleet_redis.port;
	snprintf(f->node, sizeof(f->node), "%s", cfg->fleet_node ?
	    cfg->fleet_node : "localhost");
	if (cfg->fleet_password && (f->password = strdup(cfg->fleet_password)) == NULL) {
		free(f);
		return -1;
	}
	f->nonce = uv_hrtime() ^ ((uint64_t)getpid() << 32);
	f->nodes_alive = 1;
	if (uv_timer_init(f->loop, &f->tick) != 0) {
		free(f->password);
		free(f);
		return -1;
	}
	f->tick.data = f;
	(void)uv_timer_start(&f->tick, fleet_on_tick, 0, FLEET_TICK_MS);
	snprintf(f->why, sizeof(f->why), "connecting");
	log_event(LOG_LEVEL_INFO, "fleet", "state=connecting node=%s redis=%s:%u",
	    f->node, f->host, f->port);
	*out = f;
	return 0;
}

static void
fleet_on_tick_closed(uv_handle_t *h)
{
	struct fleet *f = h->data;
	void (*done)(void *) = f->done;
	void *arg = f->done_arg;

	while (f->tenants) {
		struct fleet_tenant *t = f->tenants;

		f->tenants = t->next;
		free(t);
	}
	free(f->nodes);
	free(f->password);
	free(f);
	if (done)
		done(arg);
}

/* Stop for good: drop the connection (pending calls end with NULL
 * replies; the adapter closes its poll handle), then the timer. */
static void
fleet_close_finish(struct fleet *f)
{
	redisAsyncContext *ac = f->ac;

	if (f->finishing)
		return;
	f->finishing = true;
	f->ac = NULL;
	if (ac != NULL) {
		ac->data = NULL;
		redisAsyncFree(ac);
	}
	(void)uv_timer_stop(&f->tick);
	uv_close((uv_handle_t *)&f->tick, fleet_on_tick_closed);
}

/* A clean stop says goodbye: our leases and our node entry go at once, so
 * the others need not wait for the TTLs (a restart, USR2, a reload of the
 * unit).  Written before the disconnect that flushes them. */
static void
fleet_goodbye(struct fleet *f)
{
	struct fleet_call *c;

	for (struct fleet_tenant *t = f->tenants; t; t = t->next)
		while (t->nheld > 0)
			fleet_release_one(f, t);
	if ((c = fleet_call_new(f, FC_RELEASE, NULL)) != NULL) {
		if (fleet_arg(c, "ZREM") == 0 && fleet_arg(c, "mxspool:nodes") == 0 &&
		    fleet_arg(c, "%s", f->node) == 0)
			(void)fleet_send(c);
		else
			free(c);
	}
	if ((c = fleet_call_new(f, FC_RELEASE, NULL)) != NULL) {
		if (fleet_arg(c, "DEL") == 0 &&
		    fleet_arg(c, "mxspool:node:%s", f->node) == 0)
			(void)fleet_send(c);
		else
			free(c);
	}
}

void
fleet_close(struct fleet *f, void (*done)(void *arg), void *arg)
{
	if (f == NULL) {
		if (done)
			done(arg);
		return;
	}
	f->done = done;
	f->done_arg = arg;
	if (f->ac != NULL && f->ok) {
		fleet_goodbye(f);
		f->closing = true;
		f->close_deadline = util_mono_ms() + FLEET_GOODBYE_MS;
		/* Flushes what is queued, then onDisconnect finishes. */
		redisAsyncDisconnect(f->ac);
		return;
	}
	f->closing = true;
	fleet_close_finish(f);
}
