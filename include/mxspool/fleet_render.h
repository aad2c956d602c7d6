/*
 * fleet_render.h - the fleet view as text, JSON and Prometheus lines.
 * Pure renderers over struct fleet_view (fleet.h) into a control buffer.
 */
#ifndef MXSPOOL_FLEET_RENDER_H
#define MXSPOOL_FLEET_RENDER_H

#include <stdbool.h>

struct control_buf;
struct fleet_view;

/* `status --fleet [--json]`: "ok\n" and the answer. */
void fleet_render_status(const struct fleet_view *v, bool json,
    struct control_buf *b);
/* The fleet's /metrics families (mxspool_fleet_*, a node label). */
void fleet_render_metrics(const struct fleet_view *v, struct control_buf *b);

#endif
