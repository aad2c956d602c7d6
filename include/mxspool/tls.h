/*
 * tls.h - OpenSSL 3 contexts and a TLS session driven by bytes, not sockets.
 *
 * A struct tls_conn is a TLS endpoint between two byte queues: the caller
 * feeds it the ciphertext it read from the socket (tls_conn_feed), takes out
 * the ciphertext it must write to the socket (tls_conn_pending_out), and
 * reads and writes plaintext on the other side (tls_conn_read,
 * tls_conn_write).  The module never sees a file descriptor or a libuv
 * handle; the SMTP modules do that wiring.  Internally it is an SSL object
 * over two memory BIOs.
 *
 * The pumping rule for callers: after EVERY call on a conn (feed, read,
 * write, handshake, shutdown), drain tls_conn_pending_out() into the socket,
 * because any of them may have produced handshake or alert bytes.
 *
 * Ownership: a tls_ctx is a reference-counted OpenSSL SSL_CTX underneath; a
 * tls_conn keeps what it needs, so the ctx may be freed (e.g. on a config
 * reload) while conns made from it are still alive.
 *
 * Errors: functions return enum tls_status.  TLS_ERROR leaves a one-line
 * reason (from the OpenSSL error queue or the verification result) in
 * tls_conn_error(); after TLS_ERROR the conn is dead: only pending_out (to
 * flush a final alert), error, info and free may still be called.  Nothing
 * here logs.
 */
#ifndef MXSPOOL_TLS_H
#define MXSPOOL_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct tls_ctx;
struct tls_conn;

enum tls_status {
	TLS_OK = 0,
	TLS_WANT_IO = 1,      /* needs more bytes from the peer: feed, retry */
	TLS_CLOSED = 2,       /* the peer sent close_notify: no more input */
	TLS_ERROR = -1,       /* fatal for the conn (or ctx); see the reason */
	TLS_ENOMEM = -2,      /* allocation failed */
	TLS_EINVAL = -3,      /* bad argument, or the call makes no sense now */
};
const char *tls_strstatus(int status);

/*
 * Outbound policy (mirrors [tls] outbound in the config):
 *   NONE           the caller does not do STARTTLS at all; a ctx of this
 *                  mode behaves like OPPORTUNISTIC if used anyway.
 *   OPPORTUNISTIC  encrypt when offered; no certificate checks (RFC 7435).
 *   REQUIRED       the caller insists on STARTTLS; no certificate checks.
 *   VERIFY         the chain must verify against ca_file (or the system
 *                  store when ca_file is NULL) and the certificate must
 *                  match the sni_host given to tls_conn_new(); otherwise
 *                  the handshake fails with TLS_ERROR.
 * In every mode the chain and the name are still checked, and the outcome
 * is reported by tls_conn_info() as peer_verified, for logs.
 */
enum tls_client_mode {
	TLS_CLIENT_NONE,
	TLS_CLIENT_OPPORTUNISTIC,
	TLS_CLIENT_REQUIRED,
	TLS_CLIENT_VERIFY,
};

/*
 * Server context for inbound STARTTLS: TLS 1.2 or newer, the default
 * cipher lists below (forward-secret AEAD suites only), no compression, no
 * renegotiation.  cert_file is a PEM
 * chain (leaf first), key_file a PEM private key matching it.
 * Returns TLS_OK and *out, or TLS_ERROR/TLS_ENOMEM with a reason in err
 * (always NUL-terminated when errlen > 0).  Free with tls_ctx_free().
 */
int tls_server_ctx_new(const char *cert_file, const char *key_file,
    struct tls_ctx **out, char *err, size_t errlen);

/*
 * The defaults of [tls] ciphers (TLS 1.2, an OpenSSL cipher list) and
 * ciphersuites (TLS 1.3): Mozilla's "intermediate" profile, AEAD only.
 */
extern const char tls_default_ciphers[];
extern const char tls_default_ciphersuites[];

/*
 * Replace the TLS 1.2 cipher list and the TLS 1.3 suites of a server
 * context, before any conn is made from it; NULL or "" keeps the default
 * of that list.  TLS_OK; TLS_ERROR with a reason in err when OpenSSL finds
 * no usable cipher in CIPHERS or an unknown suite in CIPHERSUITES (the
 * context is then unchanged only in the list that failed: throw it away);
 * TLS_EINVAL for a client context.
 */
int tls_ctx_set_ciphers(struct tls_ctx *ctx, const char *ciphers,
    const char *ciphersuites, char *err, size_t errlen);

/*
 * Client context for outbound STARTTLS.  ca_file (PEM, may be NULL = the
 * system default store) is used to verify peers; see enum tls_client_mode.
 * Same return convention as tls_server_ctx_new().
 */
int tls_client_ctx_new(enum tls_client_mode mode, const char *ca_file,
    struct tls_ctx **out, char *err, size_t errlen);

/*
 * Another reference to CTX (returned; NULL stays NULL), for a holder that
 * makes conns from it later, e.g. an outbound session that reaches
 * STARTTLS after a reload replaced the relay's context.  Each reference is
 * dropped with tls_ctx_free().
 */
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);
/* Drop the caller's reference; conns made from it stay usable.  NULL ok. */
void tls_ctx_free(struct tls_ctx *ctx);

/*
 * A new endpoint.  is_server must match the ctx (server ctx: true).  For a
 * client, sni_host (may be NULL) is the name sent as SNI and, in VERIFY
 * mode, the name the certificate must match; an IP literal is not sent as
 * SNI.  For a server sni_host is ignored.  Returns NULL when out of memory
 * or when is_server does not match the ctx.
 * A client conn starts its handshake on the first call to any verb; call
 * tls_conn_handshake() right after creation to get the ClientHello out.
 */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx, bool is_server,
    const char *sni_host);
void tls_conn_free(struct tls_conn *conn);

/*
 * Advance the handshake.  TLS_OK once it is complete (and on every later
 * call), TLS_WANT_IO while waiting for the peer, TLS_ERROR on failure
 * (including a failed VERIFY).  Flush pending_out afterwards.
 */
int tls_conn_handshake(struct tls_conn *conn);
bool tls_conn_handshake_done(const struct tls_conn *conn);

/*
 * Bytes read from the socket.  All LEN bytes are taken (copied); the
 * handshake is advanced, and queued plaintext is encrypted once it is done.
 * Returns TLS_OK, TLS_ERROR (the handshake failed: reason set) or
 * TLS_ENOMEM.  Decrypted data is then available through tls_conn_read().
 */
int tls_conn_feed(struct tls_conn *conn, const void *cipher_in, size_t len);

/*
 * Decrypted bytes, up to CAP.  TLS_OK with *got > 0; TLS_WANT_IO with
 * *got == 0 when nothing is available yet; TLS_CLOSED with *got == 0 after
 * the peer's close_notify; TLS_ERROR on a protocol error or a truncated
 * stream.  Loop until it stops returning TLS_OK.
 */
int tls_conn_read(struct tls_conn *conn, void *plain_out, size_t cap,
    size_t *got);

/*
 * Queue plaintext to send.  Everything is taken (copied): data written
 * before the handshake completes is held and encrypted when it does.
 * Returns TLS_OK, TLS_ENOMEM, or TLS_ERROR/TLS_EINVAL on a dead or shut
 * down conn.
 */
int tls_conn_write(struct tls_conn *conn, const void *plain, size_t len);

/*
 * Ciphertext to write to the socket, up to CAP; *got == 0 when there is
 * none.  Returns TLS_OK (also when empty).  tls_conn_pending_len() tells
 * how many bytes are waiting, e.g. to size a uv_write buffer.
 */
int tls_conn_pending_out(struct tls_conn *conn, void *cipher_out, size_t cap,
    size_t *got);
size_t tls_conn_pending_len(const struct tls_conn *conn);

/*
 * Queue our close_notify (after any plaintext still held).  TLS_OK; flush
 * pending_out and close the socket (we do not wait for the peer's reply).
 */
int tls_conn_shutdown(struct tls_conn *conn);

/* Reason of the last TLS_ERROR, "" if none.  Owned by the conn. */
const char *tls_conn_error(const struct tls_conn *conn);

/* What was negotiated; valid once the handshake is done. */
struct tls_info {
	const char *version;   /* "TLSv1.3"; owned by OpenSSL, static */
	const char *cipher;    /* "TLS_AES_256_GCM_SHA384"; static */
	int bits;              /* secret bits used */
	int alg_bits;          /* bits of the algorithm */
	bool peer_verified;    /* client: chain + name verified; server: no */
	bool peer_cert;        /* the peer presented a certificate */
};

/*
 * Fill INFO.  Returns TLS_OK, or TLS_EINVAL before the handshake is done
 * (INFO is then zeroed with empty strings).
 */
int tls_conn_info(const struct tls_conn *conn, struct tls_info *info);

/*
 * "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)" into BUF, the
 * phrase used in Received: headers ("(using ...)") and logs.  Truncates to
 * fit, always NUL-terminates; returns BUF.  "" before the handshake.
 */
const char *tls_conn_info_string(const struct tls_conn *conn, char *buf,
    size_t len);

#endif
