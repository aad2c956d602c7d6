/*
 * fleet_render.c - the fleet view (fleet.h) as `mxspoolctl status --fleet`
 * text and JSON, and as /metrics lines with a node label.  Pure: it knows
 * the view and the control buffer, nothing of Redis or the relay.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>

#include "mxspool/control.h"
#include "mxspool/fleet.h"
#include "mxspool/fleet_render.h"

static void
fleet_json_figures(struct control_buf *b, const struct fleet_figures *fg)
{
	control_buf_printf(b, "{\"name\": ");
	control_buf_json_string(b, fg->tenant);
	control_buf_printf(b, ", \"primary_state\": \"%s\", \"held\": %s, "
	    "\"queued_messages\": %" PRIu64 ", \"queued_bytes\": %" PRIu64
	    ", \"oldest_age_s\": %lld, \"drain_rate\": %.3f, "
	    "\"drain_rate_limit\": %.3f, \"connections\": %u}",
	    fg->primary_state, fg->held ? "true" : "false", fg->queued_messages,
	    fg->queued_bytes, (long long)fg->oldest_age_s, fg->drain_rate,
	    fg->drain_rate_limit, fg->connections);
}

static void
fleet_render_json(const struct fleet_view *v, struct control_buf *b)
{
	control_buf_printf(b, "{\"fleet_state\": \"%s\", \"node\": ", v->state);
	control_buf_json_string(b, v->node);
	control_buf_printf(b, ", \"redis\": ");
	control_buf_json_string(b, v->redis);
	control_buf_printf(b, ", \"nodes_alive\": %u, \"nodes\": [", v->nodes_alive);
	for (size_t i = 0; i < v->nnodes; i++) {
		const struct fleet_node_view *n = &v->nodes[i];

		control_buf_printf(b, "%s{\"node\": ", i ? ", " : "");
		control_buf_json_string(b, n->node);
		control_buf_printf(b, ", \"self\": %s, \"age_s\": %.1f, \"tenants\": [",
		    n->self ? "true" : "false", (double)n->age_ms / 1000.0);
		for (size_t k = 0; k < n->ntenants; k++) {
			control_buf_printf(b, "%s", k ? ", " : "");
			fleet_json_figures(b, &n->tenants[k]);
		}
		control_buf_printf(b, "]}");
	}
	control_buf_printf(b, "], \"tenants\": [");
	for (size_t i = 0; i < v->nsums; i++) {
		const struct fleet_tenant_sum *s = &v->sums[i];

		control_buf_printf(b, "%s{\"name\": ", i ? ", " : "");
		control_buf_json_string(b, s->tenant);
		control_buf_printf(b, ", \"nodes\": %u, \"queued_messages\": %" PRIu64
		    ", \"queued_bytes\": %" PRIu64 ", \"oldest_age_s\": %lld, "
		    "\"drain_rate\": %.3f, \"connections\": %u, \"shared_limit\": ",
		    s->nodes, s->queued_messages, s->queued_bytes,
		    (long long)s->oldest_age_s, s->drain_rate, s->connections);
		if (s->shared_limit < 0)
			control_buf_printf(b, "null}");
		else
			control_buf_printf(b, "%.3f}", s->shared_limit);
	}
	control_buf_printf(b, "]}\n");
}

void
fleet_render_status(const struct fleet_view *v, bool json, struct control_buf *b)
{
	control_buf_printf(b, "ok\n");
	if (json) {
		fleet_render_json(v, b);
		return;
	}
	control_buf_printf(b, "fleet %s, node %s, redis %s, %u node%s alive%s\n\n",
	    v->state, v->node, v->redis, v->nodes_alive,
	    v->nodes_alive == 1 ? "" : "s",
	    v->state[0] == 'o' ? "" : " (last seen; each node drains at "
	    "drain_rate / nodes)");
	control_buf_printf(b, "%-20s %-16s %-8s %10s %12s %10s %8s %8s %5s\n",
	    "NODE", "TENANT", "PRIMARY", "QUEUED", "BYTES", "OLDEST_S", "RATE",
	    "LIMIT", "CONNS");
	for (size_t i = 0; i < v->nnodes; i++) {
		const struct fleet_node_view *n = &v->nodes[i];

		for (size_t k = 0; k < n->ntenants; k++) {
			const struct fleet_figures *fg = &n->tenants[k];

			control_buf_printf(b, "%-20s %-16s %-8s %10" PRIu64 " %12" PRIu64
			    " %10lld %8.2f %8.2f %5u\n", n->node, fg->tenant,
			    fg->held ? "held" : fg->primary_state, fg->queued_messages,
			    fg->queued_bytes, (long long)fg->oldest_age_s, fg->drain_rate,
			    fg->drain_rate_limit, fg->connections);
		}
	}
	for (size_t i = 0; i < v->nsums; i++) {
		const struct fleet_tenant_sum *s = &v->sums[i];
		char lim[32];

		if (s->shared_limit < 0)
			snprintf(lim, sizeof(lim), "-");
		else
			snprintf(lim, sizeof(lim), "%.2f", s->shared_limit);
		control_buf_printf(b, "%-20s %-16s %-8u %10" PRIu64 " %12" PRIu64
		    " %10lld %8.2f %8s %5u\n", "(fleet)", s->tenant, s->nodes,
		    s->queued_messages, s->queued_bytes, (long long)s->oldest_age_s,
		    s->drain_rate, lim, s->connections);
	}
}

/* One gauge family: HELP, TYPE, then a sample per node and tenant. */
static void
fleet_metric(struct control_buf *b, const struct fleet_view *v,
    const char *name, const char *help, int which)
{
	control_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
	for (size_t i = 0; i < v->nnodes; i++) {
		const struct fleet_node_view *n = &v->nodes[i];

		for (size_t k = 0; k < n->ntenants; k++) {
			const struct fleet_figures *fg = &n->tenants[k];
			double x = which == 0 ? (double)fg->queued_messages :
			    which == 1 ? (double)fg->queued_bytes :
			    which == 2 ? (double)fg->oldest_age_s :
			    which == 3 ? fg->drain_rate : (double)fg->connections;

			control_buf_printf(b, "%s{node=\"%s\",tenant=\"%s\"} %.17g\n",
			    name, n->node, fg->tenant, x);
		}
	}
}

void
fleet_render_metrics(const struct fleet_view *v, struct control_buf *b)
{
	control_buf_printf(b, "# HELP mxspool_fleet_degraded 1 while Redis is out "
	    "of reach and this node drains at drain_rate / nodes.\n"
	    "# TYPE mxspool_fleet_degraded gauge\nmxspool_fleet_degraded %d\n",
	    v->state[0] == 'o' ? 0 : 1);
	control_buf_printf(b, "# HELP mxspool_fleet_nodes Nodes of the fleet last "
	    "seen alive.\n# TYPE mxspool_fleet_nodes gauge\nmxspool_fleet_nodes %u\n",
	    v->nodes_alive);
	fleet_metric(b, v, "mxspool_fleet_queue_messages",
	    "Messages queued for the tenant on each node of the fleet.", 0);
	fleet_metric(b, v, "mxspool_fleet_queue_bytes",
	    "Bytes queued for the tenant on each node of the fleet.", 1);
	fleet_metric(b, v, "mxspool_fleet_queue_oldest_seconds",
	    "Age of the oldest message of the tenant on each node.", 2);
	fleet_metric(b, v, "mxspool_fleet_drain_rate",
	    "Messages per second each node delivered over the last 10 s.", 3);
	fleet_metric(b, v, "mxspool_fleet_connections",
	    "Delivery connections (leases) each node holds.", 4);
	control_buf_printf(b, "# HELP mxspool_fleet_shared_limit The fleet-wide "
	    "drain limit in Redis (ramp and back-off), msg/s.\n"
	    "# TYPE mxspool_fleet_shared_limit gauge\n");
	for (size_t i = 0; i < v->nsums; i++)
		if (v->sums[i].shared_limit >= 0)
			control_buf_printf(b, "mxspool_fleet_shared_limit{tenant=\"%s\"} "
			    "%.17g\n", v->sums[i].tenant, v->sums[i].shared_limit);
}
