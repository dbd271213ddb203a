#!/bin/sh
# push-jobs-server preinst (deb: install|upgrade; rpm %pre: 1|2).
# Creates the push-jobs system user before any file is unpacked.
set -e

if ! getent group push-jobs >/dev/null; then
    groupadd --system push-jobs
fi
if ! getent passwd push-jobs >/dev/null; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    useradd --system --gid push-jobs --home-dir /var/lib/push-jobs-server \
        --no-create-home --shell "$nologin" --comment "push jobs server" push-jobs
fi
exit 0
