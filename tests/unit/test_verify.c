/*
 * test_verify.c - the recipient verifier on a real libuv loop, its wall
 * clock injected: what the cache answers while the primary cannot be asked
 * (and when answers expire), forget, the cache file across a close and a
 * new start (and a damaged one), and an RCPT whose probe cannot connect
 * answered by the down path, later, exactly once.
 *
 * No SMTP server is needed: the "primary" hook says down, or points at a
 * loopback port nobody listens on.  Every test ends with verify_close()
 * and asserts that the loop then closes with no handle left.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/rcache.h"
#include "mxspool/verify.h"

#define DAY (24LL * 3600 * 1000)
#define WAIT_MS 10000

/* The injected wall clock (verify_deps.now_ms takes no argument). */
static int64_t fake_now = 1700000000000LL;

static int64_t
clock_now(void)
{
	return fake_now;
}

struct fx {
	uv_loop_t loop;
	char dir[64], cdir[96];
	struct config *cfg;
	struct verify *v;
	bool up;                      /* what the primary hook says */
	int dead_port;                /* where an "up" primary points */
	int primary_calls;
	bool closed;
	int answers;
	enum verify_answer last;
};

static bool
primary(void *arg, const char *tenant, const char *rcpt,
    struct verify_primary *out)
{
	struct fx *fx = arg;
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->addr;

	(void)rcpt;
	assert_string_equal(tenant, "demo");
	fx->primary_calls++;
	if (!fx->up)
		return false;
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)fx->dead_port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	snprintf(out->host, sizeof(out->host), "127.0.0.1");
	out->rate_limit = 10;
	return true;
}

/* A loopback port that refuses connections: bound, never listened on. */
static int
dead_port(int *fd)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	*fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(*fd >= 0);
	assert_int_equal(bind(*fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(*fd, (struct sockaddr *)&sin, &len), 0);
	return ntohs(sin.sin_port);
}

static void
fx_config(struct fx *fx, const char *tenant_extra)
{
	char text[1024], err[512];
	FILE *fp;

	snprintf(text, sizeof(text), "[server]\nhostname = mx.test\n"
	    "spool_dir = %s\n[tenant:demo]\ndomains = example.test\n"
	    "primary = 127.0.0.1:9\nrecipients = learn\n%s%s", fx->dir,
	    tenant_extra && strstr(tenant_extra, "verify_timeout") ? "" :
	    "verify_timeout = 500ms\n", tenant_extra ? tenant_extra : "");
	fp = fmemopen(text, strlen(text), "r");
	assert_non_null(fp);
	if (config_load_stream(fp, "test.ini", &fx->cfg, err, sizeof(err)) != 0)
		fail_msg("config: %s", err);
	fclose(fp);
}

static void
fx_start(struct fx *fx)
{
	struct verify_deps d = { 0 };

	d.loop = &fx->loop;
	d.dir = fx->cdir;
	d.primary = primary;
	d.arg = fx;
	d.now_ms = clock_now;
	assert_int_equal(verify_new(&d, fx->cfg, NULL, &fx->v), 0);
}

static struct fx *
fx_new(const char *tenant_extra)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	assert_non_null(fx);
	assert_int_equal(uv_loop_init(&fx->loop), 0);
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/test_verify.XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	snprintf(fx->cdir, sizeof(fx->cdir), "%s/recipients", fx->dir);
	fx_config(fx, tenant_extra);
	return fx;
}

/* Run the loop for about MS milliseconds. */
static void
run_for(struct fx *fx, int ms)
{
	uint64_t end = uv_now(&fx->loop) + (uint64_t)ms;

	while (uv_now(&fx->loop) < end) {
		uv_run(&fx->loop, UV_RUN_NOWAIT);
		usleep(5000);
		uv_update_time(&fx->loop);
	}
}

static void
on_closed(void *arg)
{
	((struct fx *)arg)->closed = true;
}

/* verify_close, wait for it, and prove the loop has nothing left. */
static void
fx_stop(struct fx *fx)
{
	uint64_t end;

	fx->closed = false;
	verify_close(fx->v, on_closed, fx);
	end = uv_now(&fx->loop) + WAIT_MS;
	while (!fx->closed && uv_now(&fx->loop) < end) {
		uv_run(&fx->loop, UV_RUN_ONCE);
		uv_update_time(&fx->loop);
	}
	assert_true(fx->closed);
	assert_int_equal(uv_run(&fx->loop, UV_RUN_NOWAIT), 0);
	fx->v = NULL;
}

static void
fx_free(struct fx *fx)
{
	char cmd[128];

	if (fx->v)
		fx_stop(fx);
	assert_int_equal(uv_loop_close(&fx->loop), 0);
	config_free(fx->cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	assert_int_equal(system(cmd), 0);
	free(fx);
}

static void
on_answer(void *arg, enum verify_answer a)
{
	struct fx *fx = arg;

	fx->answers++;
	fx->last = a;
}

/* While the primary cannot be asked: learned valid 250 until it expires,
 * never seen per unknown_recipient; the primary is asked before any probe;
 * forget drops an address. */
static void
test_down_path_and_expiry(void **state)
{
	struct fx *fx = fx_new(NULL);

	(void)state;
	fx_start(fx);
	run_for(fx, 50);             /* the (missing) file is read */
	assert_int_equal(verify_rcpt(fx->v, "demo", "bob@example.test", on_answer, fx),
	    VERIFY_TEMPFAIL);
	assert_true(fx->primary_calls >= 1);
	verify_learn(fx->v, "demo", "Bob@Example.TEST");
	assert_int_equal(verify_cached(fx->v, "demo"), 1);
	assert_int_equal(verify_rcpt(fx->v, "demo", "bob@example.test", on_answer, fx),
	    VERIFY_ACCEPT);
	fake_now += 31 * DAY - 1;
	assert_int_equal(verify_rcpt(fx->v, "demo", "bob@example.test", on_answer, fx),
	    VERIFY_ACCEPT);
	fake_now += 1;
	assert_int_equal(verify_rcpt(fx->v, "demo", "bob@example.test", on_answer, fx),
	    VERIFY_TEMPFAIL);
	assert_int_equal(verify_cached(fx->v, "demo"), 0);
	verify_learn(fx->v, "demo", "carol@example.test");
	assert_int_equal(verify_forget(fx->v, "demo", "CAROL@example.test"), 0);
	assert_int_equal(verify_forget(fx->v, "demo", "carol@example.test"), 1);
	assert_int_equal(verify_forget(fx->v, "nobody", "carol@example.test"), -1);
	assert_int_equal(verify_cached(fx->v, "nobody"), 0);
	assert_int_equal(fx->answers, 0);   /* no answer was ever deferred */
	fx_free(fx);
}

/* unknown_recipient = accept takes what the cache does not know. */
static void
test_unknown_accept(void **state)
{
	struct fx *fx = fx_new("unknown_recipient = accept\n");

	(void)state;
	fx_start(fx);
	assert_int_equal(verify_rcpt(fx->v, "demo", "new@example.test", on_answer, fx),
	    VERIFY_ACCEPT);
	fx_free(fx);
}

/* The cache is written at close and read back by the next start; a
 * damaged file is ignored (empty cache) and replaced by the next write. */
static void
test_file_round_trip_and_damage(void **state)
{
	struct fx *fx = fx_new(NULL);
	char path[160];
	struct stat sb;
	FILE *fp;

	(void)state;
	fx_start(fx);
	run_for(fx, 50);
	verify_learn(fx->v, "demo", "a@example.test");
	verify_learn(fx->v, "demo", "b@example.test");
	fx_stop(fx);
	snprintf(path, sizeof(path), "%s/demo", fx->cdir);
	assert_int_equal(stat(path, &sb), 0);
	assert_true(sb.st_size > RCACHE_IMAGE_HDR + RCACHE_IMAGE_DIGEST);

	fx_start(fx);
	run_for(fx, 200);
	assert_int_equal(verify_cached(fx->v, "demo"), 2);
	assert_int_equal(verify_rcpt(fx->v, "demo", "b@example.test", on_answer, fx),
	    VERIFY_ACCEPT);
	fx_stop(fx);

	fp = fopen(path, "r+");
	assert_non_null(fp);
	assert_int_equal(fseek(fp, RCACHE_IMAGE_HDR + 3, SEEK_SET), 0);
	assert_int_equal(fputc('X', fp), 'X');
	assert_int_equal(fclose(fp), 0);
	fx_start(fx);
	run_for(fx, 200);
	assert_int_equal(verify_cached(fx->v, "demo"), 0);
	verify_learn(fx->v, "demo", "c@example.test");
	fx_stop(fx);
	fx_start(fx);
	run_for(fx, 200);
	assert_int_equal(verify_cached(fx->v, "demo"), 1);
	assert_int_equal(verify_rcpt(fx->v, "demo", "c@example.test", on_answer, fx),
	    VERIFY_ACCEPT);
	fx_free(fx);
}

/* The primary is "up" but its port refuses: the RCPT is answered later
 * (never inside verify_rcpt), once, with the down path; the same address
 * asked twice waits on one request. */
static void
test_probe_fails_to_down_path(void **state)
{
	struct fx *fx = fx_new(NULL);
	int fd;
	uint64_t end;

	(void)state;
	fx->dead_port = dead_port(&fd);
	fx->up = true;
	fx_start(fx);
	run_for(fx, 50);
	assert_int_equal(verify_rcpt(fx->v, "demo", "x@example.test", on_answer, fx),
	    VERIFY_PENDING);
	assert_int_equal(verify_rcpt(fx->v, "demo", "X@example.test", on_answer, fx),
	    VERIFY_PENDING);
	assert_int_equal(fx->answers, 0);
	end = uv_now(&fx->loop) + WAIT_MS;
	while (fx->answers < 2 && uv_now(&fx->loop) < end) {
		uv_run(&fx->loop, UV_RUN_ONCE);
		uv_update_time(&fx->loop);
	}
	assert_int_equal(fx->answers, 2);
	assert_int_equal(fx->last, VERIFY_TEMPFAIL);
	assert_int_equal(verify_cached(fx->v, "demo"), 0);   /* nothing learned */
	run_for(fx, 100);
	assert_int_equal(fx->answers, 2);                     /* exactly once each */
	close(fd);
	fx_free(fx);
}

/* An RCPT still waiting at close is answered by the down path then. */
static void
test_close_answers_waiters(void **state)
{
	struct fx *fx = fx_new("verify_timeout = 10s\n");
	int fd;

	(void)state;
	/* A port that takes the connection and never speaks: the probe waits
	 * for a banner that never comes. */
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	fx->dead_port = ntohs(sin.sin_port);
	fx->up = true;
	fx_start(fx);
	assert_int_equal(verify_rcpt(fx->v, "demo", "y@example.test", on_answer, fx),
	    VERIFY_PENDING);
	run_for(fx, 200);
	assert_int_equal(fx->answers, 0);
	fx_stop(fx);
	assert_int_equal(fx->answers, 1);
	assert_int_equal(fx->last, VERIFY_TEMPFAIL);
	close(fd);
	fx_free(fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_down_path_and_expiry),
		cmocka_unit_test(test_unknown_accept),
		cmocka_unit_test(test_file_round_trip_and_damage),
		cmocka_unit_test(test_probe_fails_to_down_path),
		cmocka_unit_test(test_close_answers_waiters),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
