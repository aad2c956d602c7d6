/*
 * tls.c - OpenSSL 3 contexts and the memory-BIO glue for STARTTLS.
 *
 * Each struct tls_conn owns one SSL object over two BIO_s_mem buffers:
 *
 *     socket bytes --tls_conn_feed--> rbio --SSL--> tls_conn_read --> plain
 *     plain --tls_conn_write--> SSL --> wbio --tls_conn_pending_out--> socket
 *
 * Memory BIOs never block and never run short of room, so SSL_* calls only
 * ever ask for more input (SSL_ERROR_WANT_READ); "want write" cannot happen.
 * The read BIO is set to return "retry" rather than EOF when empty: the end
 * of the TCP stream is the caller's business, not OpenSSL's.
 *
 * Plaintext written before the handshake is done is held in the conn and
 * encrypted the moment it completes, so callers can queue a reply without
 * tracking handshake state.  Shutdown is the same: it is queued behind any
 * held plaintext.
 *
 * Errors are taken from the OpenSSL error queue, which is cleared before
 * every SSL call so that a reason always belongs to the call that failed.
 * The module never logs.
 */
#include "mxspool/tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/*
 * The inbound defaults are Mozilla's "intermediate" profile (v5.7): on TLS
 * 1.2 forward-secret AEAD suites only (AES-GCM and ChaCha20-Poly1305 with
 * ECDHE or DHE), on TLS 1.3 its three standard suites.  CBC suites are left
 * out although some old senders know nothing else: they are the LUCKY13
 * family that testssl.sh flags, and every MTA of the last decade speaks
 * TLS 1.2 with GCM.  A site that must take such senders sets [tls]
 * ciphers; an old sender that cannot negotiate falls back to plaintext
 * SMTP, which a backup MX accepts anyway.
 */
const char tls_default_ciphers[] =
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
	"DHE-RSA-CHACHA20-POLY1305";
const char tls_default_ciphersuites[] =
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
	"TLS_CHACHA20_POLY1305_SHA256";

#define TLS_ERR_MAX 256

struct tls_ctx {
	SSL_CTX *ssl_ctx;
	unsigned refs;                /* tls_ctx_ref() + 1; freed at 0 */
	bool is_server;
	enum tls_client_mode mode;
};

struct tls_conn {
	SSL *ssl;
	BIO *rbio;                    /* ciphertext from the peer, SSL reads */
	BIO *wbio;                    /* ciphertext to the peer, SSL writes */
	bool is_server;
	enum tls_client_mode mode;
	bool handshake_done;
	bool dead;                    /* a fatal error happened */
	bool shutdown_wanted;         /* tls_conn_shutdown() was called */
	bool shutdown_sent;
	bool peer_closed;             /* close_notify received */
	bool verify_without_host;     /* VERIFY mode but no name to check */
	unsigned char *hold;          /* plaintext waiting for the handshake */
	size_t hold_len, hold_cap;
	char err[TLS_ERR_MAX];
};

const char *
tls_strstatus(int status)
{
	switch (status) {
	case TLS_OK: return "ok";
	case TLS_WANT_IO: return "want more input";
	case TLS_CLOSED: return "closed by peer";
	case TLS_ERROR: return "TLS error";
	case TLS_ENOMEM: return "out of memory";
	case TLS_EINVAL: return "invalid argument";
	}
	return "unknown TLS status";
}

/*
 * Format "WHAT: reason" from the OpenSSL error queue into BUF and empty the
 * queue.  The first queued error is the root cause (later ones are the
 * callers that passed it up), so it is the one reported; its data string
 * (a file name, a verify detail) is appended when there is one.
 */
static void
tls_format_error(char *buf, size_t len, const char *what)
{
	const char *data = NULL;
	int flags = 0;
	unsigned long e;
	char reason[160];

	if (len == 0)
		return;
	e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags);
	if (e == 0) {
		snprintf(buf, len, "%s", what);
	} else {
		const char *r = ERR_reason_error_string(e);

		if (r != NULL)
			snprintf(reason, sizeof(reason), "%s", r);
		else
			ERR_error_string_n(e, reason, sizeof(reason));
		if (data != NULL && (flags & ERR_TXT_STRING) && data[0] != '\0')
			snprintf(buf, len, "%s: %s (%s)", what, reason, data);
		else
			snprintf(buf, len, "%s: %s", what, reason);
	}
	ERR_clear_error();
}

static void
tls_set_err(char *err, size_t errlen, const char *msg)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s", msg);
}

static int
tls_ctx_common(SSL_CTX *c, char *err, size_t errlen)
{
	/*
	 * TLS 1.2 is the floor: older versions are disabled by OpenSSL 3's
	 * default security level anyway, and saying so makes it explicit.
	 * Renegotiation is refused (it only adds attack surface to SMTP), and
	 * compression is off (CRIME).  Releasing idle buffers keeps thousands
	 * of quiet inbound sessions cheap.
	 */
	if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1) {
		tls_format_error(err, errlen, "cannot set minimum TLS version");
		return TLS_ERROR;
	}
	SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	return TLS_OK;
}

/*
 * Set the TLS 1.2 cipher list and the TLS 1.3 suites of C (NULL or "":
 * the defaults above).  OpenSSL takes a list when at least one of its
 * entries is known, so a list that leaves nothing usable on TLS 1.2 is
 * the error to catch, and SSL_CTX_set_ciphersuites refuses unknown names.
 */
static int
tls_ctx_apply_ciphers(SSL_CTX *c, const char *ciphers,
    const char *ciphersuites, char *err, size_t errlen)
{
	if (ciphers == NULL || ciphers[0] == '\0')
		ciphers = tls_default_ciphers;
	if (ciphersuites == NULL || ciphersuites[0] == '\0')
		ciphersuites = tls_default_ciphersuites;
	ERR_clear_error();
	if (SSL_CTX_set_cipher_list(c, ciphers) != 1) {
		tls_format_error(err, errlen, "ciphers: no usable cipher in the list");
		return TLS_ERROR;
	}
	if (SSL_CTX_set_ciphersuites(c, ciphersuites) != 1) {
		tls_format_error(err, errlen, "ciphersuites: not a list of TLS 1.3 suites");
		return TLS_ERROR;
	}
	return TLS_OK;
}

int
tls_ctx_set_ciphers(struct tls_ctx *ctx, const char *ciphers,
    const char *ciphersuites, char *err, size_t errlen)
{
	tls_set_err(err, errlen, "");
	if (ctx == NULL || !ctx->is_server) {
		tls_set_err(err, errlen, "cipher lists are for a server context");
		return TLS_EINVAL;
	}
	return tls_ctx_apply_ciphers(ctx->ssl_ctx, ciphers, ciphersuites, err,
	    errlen);
}

int
tls_server_ctx_new(const char *cert_file, const char *key_file,
    struct tls_ctx **out, char *err, size_t errlen)
{
	static const unsigned char sid_ctx[] = "mxspool";
	struct tls_ctx *t = NULL;
	SSL_CTX *c = NULL;
	int rc = TLS_ERROR;

	tls_set_err(err, errlen, "");
	if (out == NULL || cert_file == NULL || key_file == NULL) {
		tls_set_err(err, errlen, "certificate and key files are required");
		return TLS_EINVAL;
	}
	*out = NULL;
	ERR_clear_error();
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		tls_set_err(err, errlen, "out of memory");
		return TLS_ENOMEM;
	}
	if ((c = SSL_CTX_new(TLS_server_method())) == NULL) {
		tls_format_error(err, errlen, "cannot create server context");
		goto done;
	}
	if ((rc = tls_ctx_common(c, err, errlen)) != TLS_OK)
		goto done;
	rc = TLS_ERROR;
	/* Client-initiated renegotiation is already off by default in 3.0
	 * (SSL_OP_ALLOW_CLIENT_RENEGOTIATION is not set). */
	SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
	if ((rc = tls_ctx_apply_ciphers(c, NULL, NULL, err, errlen)) != TLS_OK)
		goto done;
	rc = TLS_ERROR;
	/* DHE suites need parameters; let OpenSSL size them to the key. */
	if (SSL_CTX_set_dh_auto(c, 1) != 1) {
		tls_format_error(err, errlen, "cannot enable DH parameters");
		goto done;
	}
	if (SSL_CTX_set_session_id_context(c, sid_ctx, sizeof(sid_ctx) - 1) != 1) {
		tls_format_error(err, errlen, "cannot set session id context");
		goto done;
	}
	if (SSL_CTX_use_certificate_chain_file(c, cert_file) != 1) {
		tls_format_error(err, errlen, "cannot load certificate");
		goto done;
	}
	if (SSL_CTX_use_PrivateKey_file(c, key_file, SSL_FILETYPE_PEM) != 1) {
		tls_format_error(err, errlen, "cannot load private key");
		goto done;
	}
	if (SSL_CTX_check_private_key(c) != 1) {
		tls_format_error(err, errlen, "private key does not match certificate");
		goto done;
	}
	t->ssl_ctx = c;
	t->refs = 1;
	t->is_server = true;
	t->mode = TLS_CLIENT_NONE;
	*out = t;
	return TLS_OK;
done:
	SSL_CTX_free(c);
	free(t);
	return rc;
}

int
tls_client_ctx_new(enum tls_client_mode mode, const char *ca_file,
    struct tls_ctx **out, char *err, size_t errlen)
{
	struct tls_ctx *t = NULL;
	SSL_CTX *c = NULL;
	int rc = TLS_ERROR;

	tls_set_err(err, errlen, "");
	if (out == NULL || (mode != TLS_CLIENT_NONE &&
	    mode != TLS_CLIENT_OPPORTUNISTIC && mode != TLS_CLIENT_REQUIRED &&
	    mode != TLS_CLIENT_VERIFY)) {
		tls_set_err(err, errlen, "invalid client TLS mode");
		return TLS_EINVAL;
	}
	*out = NULL;
	ERR_clear_error();
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		tls_set_err(err, errlen, "out of memory");
		return TLS_ENOMEM;
	}
	if ((c = SSL_CTX_new(TLS_client_method())) == NULL) {
		tls_format_error(err, errlen, "cannot create client context");
		goto done;
	}
	if ((rc = tls_ctx_common(c, err, errlen)) != TLS_OK)
		goto done;
	rc = TLS_ERROR;
	/*
	 * The trust store is loaded in every mode: outside VERIFY the result
	 * does not stop the handshake (SSL_VERIFY_NONE) but is still computed,
	 * so logs can say whether the primary's certificate would verify.
	 */
	if (ca_file != NULL && ca_file[0] != '\0') {
		if (SSL_CTX_load_verify_locations(c, ca_file, NULL) != 1) {
			tls_format_error(err, errlen, "cannot load CA file");
			goto done;
		}
	} else if (SSL_CTX_set_default_verify_paths(c) != 1) {
		tls_format_error(err, errlen, "cannot load the system CA store");
		goto done;
	}
	SSL_CTX_set_verify(c, mode == TLS_CLIENT_VERIFY ? SSL_VERIFY_PEER :
	    SSL_VERIFY_NONE, NULL);
	t->ssl_ctx = c;
	t->refs = 1;
	t->is_server = false;
	t->mode = mode;
	*out = t;
	return TLS_OK;
done:
	SSL_CTX_free(c);
	free(t);
	return rc;
}

struct tls_ctx *
tls_ctx_ref(struct tls_ctx *ctx)
{
	if (ctx != NULL)
		ctx->refs++;
	return ctx;
}

void
tls_ctx_free(struct tls_ctx *ctx)
{
	if (ctx == NULL || --ctx->refs > 0)
		return;
	SSL_CTX_free(ctx->ssl_ctx);
	free(ctx);
}

static bool
tls_is_ip_literal(const char *s)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Name checks for the client side; returns 0 or -1 (error queue set). */
static int
tls_conn_set_peer_name(struct tls_conn *c, const char *host)
{
	X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
	size_t n = strlen(host);
	char name[256];

	/* DNS gives names with or without the root dot; certificates never. */
	if (n > 0 && host[n - 1] == '.')
		n--;
	if (n == 0 || n >= sizeof(name))
		return -1;
	memcpy(name, host, n);
	name[n] = '\0';
	if (tls_is_ip_literal(name))
		return X509_VERIFY_PARAM_set1_ip_asc(vp, name) == 1 ? 0 : -1;
	/* SNI is for names only (RFC 6066 3: "Literal IPv4 and IPv6 addresses
	 * are not permitted"). */
	if (SSL_set_tlsext_host_name(c->ssl, name) != 1)
		return -1;
	SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	return SSL_set1_host(c->ssl, name) == 1 ? 0 : -1;
}

struct tls_conn *
tls_conn_new(struct tls_ctx *ctx, bool is_server, const char *sni_host)
{
	struct tls_conn *c;

	if (ctx == NULL || ctx->is_server != is_server)
		return NULL;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	ERR_clear_error();
	c->is_server = is_server;
	c->mode = ctx->mode;
	if ((c->ssl = SSL_new(ctx->ssl_ctx)) == NULL)
		goto fail;
	if ((c->rbio = BIO_new(BIO_s_mem())) == NULL)
		goto fail;
	if ((c->wbio = BIO_new(BIO_s_mem())) == NULL)
		goto fail;
	/* An empty read BIO means "come back later", not end of stream. */
	BIO_set_mem_eof_return(c->rbio, -1);
	/* SSL_set_bio takes both references: free through SSL_free only. */
	SSL_set_bio(c->ssl, c->rbio, c->wbio);
	if (is_server) {
		SSL_set_accept_state(c->ssl);
	} else {
		SSL_set_connect_state(c->ssl);
		if (sni_host != NULL && sni_host[0] != '\0') {
			if (tls_conn_set_peer_name(c, sni_host) != 0 &&
			    c->mode == TLS_CLIENT_VERIFY)
				goto fail_ssl;
		} else if (c->mode == TLS_CLIENT_VERIFY) {
			c->verify_without_host = true;
		}
	}
	ERR_clear_error();
	return c;
fail:
	BIO_free(c->rbio);
	BIO_free(c->wbio);
fail_ssl:
	SSL_free(c->ssl);
	free(c);
	ERR_clear_error();
	return NULL;
}

void
tls_conn_free(struct tls_conn *conn)
{
	if (conn == NULL)
		return;
	SSL_free(conn->ssl);           /* frees both BIOs */
	free(conn->hold);
	free(conn);
}

/* Mark the conn dead with a reason built from the error queue. */
static int
tls_conn_fail(struct tls_conn *c, const char *what)
{
	long vr;

	c->dead = true;
	vr = SSL_get_verify_result(c->ssl);
	if (!c->is_server && c->mode == TLS_CLIENT_VERIFY && vr != X509_V_OK) {
		/* The queue only says "certificate verify failed"; the verify
		 * result says why. */
		snprintf(c->err, sizeof(c->err), "certificate verify failed: %s",
		    X509_verify_cert_error_string(vr));
		ERR_clear_error();
	} else {
		tls_format_error(c->err, sizeof(c->err), what);
	}
	return TLS_ERROR;
}

/* Map an SSL_get_error() code for a failed call to our status. */
static int
tls_conn_status(struct tls_conn *c, int ret, const char *what)
{
	switch (SSL_get_error(c->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		ERR_clear_error();
		return TLS_WANT_IO;
	case SSL_ERROR_ZERO_RETURN:
		ERR_clear_error();
		c->peer_closed = true;
		return TLS_CLOSED;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0) {
			c->dead = true;
			snprintf(c->err, sizeof(c->err), "%s: unexpected end of stream",
			    what);
			return TLS_ERROR;
		}
		return tls_conn_fail(c, what);
	default:
		return tls_conn_fail(c, what);
	}
}

/* Encrypt held plaintext, then send close_notify if one was asked for. */
static int
tls_conn_flush_hold(struct tls_conn *c)
{
	size_t off = 0, w;
	int r;

	while (off < c->hold_len) {
		ERR_clear_error();
		r = SSL_write_ex(c->ssl, c->hold + off, c->hold_len - off, &w);
		if (r != 1) {
			/* Keep what was not written; memory BIOs make this a
			 * real error rather than back-pressure. */
			memmove(c->hold, c->hold + off, c->hold_len - off);
			c->hold_len -= off;
			r = tls_conn_status(c, r, "write failed");
			return r == TLS_WANT_IO ? TLS_OK : r;
		}
		off += w;
	}
	c->hold_len = 0;
	if (c->shutdown_wanted && !c->shutdown_sent) {
		ERR_clear_error();
		/* 0 = our close_notify is out, the peer's not yet seen: fine,
		 * we do not wait for it. */
		if (SSL_shutdown(c->ssl) < 0)
			return tls_conn_status(c, -1, "shutdown failed");
		c->shutdown_sent = true;
	}
	return TLS_OK;
}

int
tls_conn_handshake(struct tls_conn *conn)
{
	int r;

	if (conn == NULL)
		return TLS_EINVAL;
	if (conn->dead)
		return TLS_ERROR;
	if (conn->handshake_done)
		return TLS_OK;
	if (conn->verify_without_host) {
		conn->dead = true;
		snprintf(conn->err, sizeof(conn->err),
		    "certificate verify failed: no host name to verify");
		return TLS_ERROR;
	}
	ERR_clear_error();
	r = SSL_do_handshake(conn->ssl);
	if (r != 1) {
		r = tls_conn_status(conn, r, "handshake failed");
		/* A close_notify during the handshake is a failure. */
		if (r == TLS_CLOSED) {
			conn->dead = true;
			snprintf(conn->err, sizeof(conn->err),
			    "handshake failed: peer closed the connection");
			return TLS_ERROR;
		}
		return r;
	}
	conn->handshake_done = true;
	return tls_conn_flush_hold(conn);
}

bool
tls_conn_handshake_done(const struct tls_conn *conn)
{
	return conn != NULL && conn->handshake_done;
}

int
tls_conn_feed(struct tls_conn *conn, const void *cipher_in, size_t len)
{
	const unsigned char *p = cipher_in;
	int r;

	if (conn == NULL || (cipher_in == NULL && len > 0))
		return TLS_EINVAL;
	if (conn->dead)
		return TLS_ERROR;
	while (len > 0) {
		int chunk = len > INT_MAX ? INT_MAX : (int)len;

		ERR_clear_error();
		r = BIO_write(conn->rbio, p, chunk);
		if (r <= 0) {
			ERR_clear_error();
			return TLS_ENOMEM;
		}
		p += r;
		len -= (size_t)r;
	}
	if (!conn->handshake_done) {
		r = tls_conn_handshake(conn);
		return r == TLS_WANT_IO ? TLS_OK : r;
	}
	if (conn->hold_len > 0 || (conn->shutdown_wanted && !conn->shutdown_sent))
		return tls_conn_flush_hold(conn);
	return TLS_OK;
}

int
tls_conn_read(struct tls_conn *conn, void *plain_out, size_t cap,
    size_t *got)
{
	int r;

	if (got != NULL)
		*got = 0;
	if (conn == NULL || got == NULL || (plain_out == NULL && cap > 0))
		return TLS_EINVAL;
	if (conn->dead)
		return TLS_ERROR;
	if (conn->peer_closed)
		return TLS_CLOSED;
	if (!conn->handshake_done) {
		r = tls_conn_handshake(conn);
		if (r != TLS_OK)
			return r;
	}
	if (cap == 0)
		return TLS_OK;
	ERR_clear_error();
	r = SSL_read_ex(conn->ssl, plain_out, cap, got);
	if (r == 1)
		return TLS_OK;
	*got = 0;
	return tls_conn_status(conn, r, "read failed");
}

int
tls_conn_write(struct tls_conn *conn, const void *plain, size_t len)
{
	if (conn == NULL || (plain == NULL && len > 0))
		return TLS_EINVAL;
	if (conn->dead)
		return TLS_ERROR;
	if (conn->shutdown_wanted)
		return TLS_EINVAL;
	if (len == 0)
		return TLS_OK;
	if (len > SIZE_MAX - conn->hold_len)
		return TLS_ENOMEM;
	if (conn->hold_len + len > conn->hold_cap) {
		size_t cap = conn->hold_cap ? conn->hold_cap : 4096;
		unsigned char *p;

		while (cap < conn->hold_len + len)
			cap = cap > SIZE_MAX / 2 ? conn->hold_len + len : cap * 2;
		if ((p = realloc(conn->hold, cap)) == NULL)
			return TLS_ENOMEM;
		conn->hold = p;
		conn->hold_cap = cap;
	}
	memcpy(conn->hold + conn->hold_len, plain, len);
	conn->hold_len += len;
	if (!conn->handshake_done)
		return TLS_OK;
	return tls_conn_flush_hold(conn);
}

int
tls_conn_pending_out(struct tls_conn *conn, void *cipher_out, size_t cap,
    size_t *got)
{
	size_t n;

	if (got != NULL)
		*got = 0;
	if (conn == NULL || got == NULL || (cipher_out == NULL && cap > 0))
		return TLS_EINVAL;
	n = BIO_ctrl_pending(conn->wbio);
	if (n == 0 || cap == 0)
		return TLS_OK;
	if (n > cap)
		n = cap;
	ERR_clear_error();
	/* A memory BIO returns all it has up to the size asked for. */
	if (BIO_read_ex(conn->wbio, cipher_out, n, got) != 1) {
		ERR_clear_error();
		*got = 0;
	}
	return TLS_OK;
}

size_t
tls_conn_pending_len(const struct tls_conn *conn)
{
	return conn == NULL ? 0 : BIO_ctrl_pending(conn->wbio);
}

int
tls_conn_shutdown(struct tls_conn *conn)
{
	if (conn == NULL)
		return TLS_EINVAL;
	if (conn->dead)
		return TLS_ERROR;
	conn->shutdown_wanted = true;
	/* Before the handshake there is nothing to close politely: the held
	 * data goes out (and then close_notify) only if it completes. */
	if (!conn->handshake_done)
		return TLS_OK;
	return tls_conn_flush_hold(conn);
}

const char *
tls_conn_error(const struct tls_conn *conn)
{
	return conn == NULL ? "" : conn->err;
}

int
tls_conn_info(const struct tls_conn *conn, struct tls_info *info)
{
	const SSL_CIPHER *ciph;

	if (info == NULL)
		return TLS_EINVAL;
	memset(info, 0, sizeof(*info));
	info->version = "";
	info->cipher = "";
	if (conn == NULL || !conn->handshake_done)
		return TLS_EINVAL;
	info->version = SSL_get_version(conn->ssl);
	if ((ciph = SSL_get_current_cipher(conn->ssl)) != NULL) {
		info->cipher = SSL_CIPHER_get_name(ciph);
		info->bits = SSL_CIPHER_get_bits(ciph, &info->alg_bits);
	}
	info->peer_cert = SSL_get0_peer_certificate(conn->ssl) != NULL;
	/* A server does not ask for client certificates, so nothing of the
	 * peer is ever verified on that side. */
	info->peer_verified = !conn->is_server && info->peer_cert &&
	    SSL_get_verify_result(conn->ssl) == X509_V_OK;
	return TLS_OK;
}

const char *
tls_conn_info_string(const struct tls_conn *conn, char *buf, size_t len)
{
	struct tls_info info;

	if (buf == NULL || len == 0)
		return buf;
	buf[0] = '\0';
	if (tls_conn_info(conn, &info) != TLS_OK)
		return buf;
	snprintf(buf, len, "%s with cipher %s (%d/%d bits)", info.version,
	    info.cipher, info.bits, info.alg_bits);
	return buf;
}
