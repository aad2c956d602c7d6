#!/bin/sh
# mxspool-notify.sh master|backup|fault|stop - keepalived's notify script:
# the spool volume and mxspool follow the VRRP address (keepalived.conf).
#
# master: promote the DRBD resource, mount it on the spool folder, start
#         mxspool (its recovery replays the journal: every message the old
#         master acknowledged is on the volume).  If DRBD refuses to promote
#         (the peer is still Primary: a split brain in the making), stop
#         here with an error: never start mxspool on a volume we may not own.
# backup, fault, stop: stop mxspool (its sessions finish, its journal
#         closes), unmount, demote.
#
# On shared storage with working locks (NFS, a cluster file system) instead
# of DRBD, leave out the drbdadm and mount lines and run `mxspoold
# --standby` on the backup: it takes over by itself when the lock goes, and
# this script then only needs to move the address (keepalived does).
set -eu
RES=mxspool                    # contrib/drbd/mxspool.res
DEV=/dev/drbd0
SPOOL=/var/spool/mxspool
log() { logger -t mxspool-notify "$*"; }

case "${1:-}" in
master)
	log "becoming master: promoting $RES"
	if ! drbdadm primary "$RES"; then
		log "DRBD refused to promote $RES (peer still primary?): not starting mxspool"
		exit 1
	fi
	mountpoint -q "$SPOOL" || mount -o noatime "$DEV" "$SPOOL"
	touch /run/mxspool-master
	systemctl start mxspool
	log "mxspool started on $(hostname)"
	;;
backup|fault|stop)
	log "leaving master ($1): stopping mxspool"
	rm -f /run/mxspool-master
	systemctl stop mxspool || true
	if mountpoint -q "$SPOOL"; then
		umount "$SPOOL"
	fi
	drbdadm secondary "$RES" 2>/dev/null || true
	;;
*)
	echo "usage: $0 master|backup|fault|stop" >&2
	exit 64
	;;
esac
