/*
 * control.h - the control socket (mxspoolctl) and the /metrics listener.
 *
 * The control socket speaks one request per connection: the client sends a
 * single line "COMMAND [ARGS...] [--json]\n"; the server answers with a line
 * "ok" or "error MESSAGE", then the body, then closes.  This keeps mxspoolctl
 * a dumb pipe: all formatting, JSON included, is done here.
 *
 * control.c owns the listeners and fills one snapshot per answer from the
 * relay; the pure renderers (relay/control_render.c: text and JSON and the
 * buffer below; relay/metrics.c: Prometheus) write the answers from it.
 * The snapshots are declared in relay/control_internal.h.
 */
#ifndef MXSPOOL_CONTROL_H
#define MXSPOOL_CONTROL_H

#include <stddef.h>

struct relay;
struct control;

#define CONTROL_REQUEST_MAX 4096

/* Bind the control socket (mode 0660) and the metrics listener, if any. */
int control_new(struct relay *r, struct control **out, char *err,
    size_t errlen);
/* The listening descriptors (SIGUSR2 hands them over): 0, or -1. */
int control_listen_fds(const struct control *c, int *control_fd,
    int *metrics_fd);
/* Close both listeners and any client connection; DONE runs when closed. */
void control_close(struct control *c, void (*done)(void *arg), void *arg);

/*
 * Run one request line and append the answer (first line "ok" or
 * "error ...") to OUT, a growable buffer.  Exported for unit tests.
 */
struct control_buf {
	char *data;
	size_t len, cap;
};
void control_execute(struct relay *r, const char *line, struct control_buf *out);
void control_buf_printf(struct control_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void control_buf_json_string(struct control_buf *b, const char *s);
void control_buf_free(struct control_buf *b);
/* The Prometheus text exposition of the relay's metrics (metrics.h). */
void control_metrics(struct relay *r, struct control_buf *out);

#endif
