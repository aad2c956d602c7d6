/*
 * metrics.h - the Prometheus text exposition (format 0.0.4) of the relay's
 * figures, rendered from the same status snapshot as "mxspoolctl status".
 *
 * A pure renderer: it reads the snapshot (struct control_status, filled by
 * control.c) and appends to a control_buf; it knows nothing of the loop, the
 * spool or struct relay.  The metric names are contract (DESIGN.md,
 * "Observability"); contrib/ dashboards and alert rules use them.
 */
#ifndef MXSPOOL_METRICS_H
#define MXSPOOL_METRICS_H

struct control_buf;
struct control_status;

/* Append every metric: per-tenant families first (one sample per tenant,
 * labelled tenant="NAME"), then the relay-wide ones.  Each family has its
 * HELP and TYPE lines once, even with no tenant. */
void metrics_render(const struct control_status *st, struct control_buf *out);

/* Append S as a label value: backslash, double quote and line feed escaped
 * as the exposition format requires. */
void metrics_label_value(struct control_buf *out, const char *s);

#endif
