#!/bin/sh
# mxspool-check.sh - keepalived's health check for mxspoold (keepalived.conf
# vrrp_script chk_mxspool).  Exit 0 when this host should keep (or may take)
# the address: mxspoold answers its control socket, or it is not running
# here because this host is the backup (so a backup is not penalised for not
# serving).  Exit 1 when mxspool should be running here and does not answer.
set -u
# /run/mxspool-master (set by mxspool-notify.sh) is outside RuntimeDirectory,
# which systemd empties whenever mxspool stops.
if [ -e /run/mxspool-master ]; then
	exec mxspoolctl -c /etc/mxspool/mxspool.ini status >/dev/null 2>&1
fi
exit 0
