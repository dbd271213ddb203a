#!/bin/sh
# push-jobs-server postrm (deb: remove|purge|upgrade|...; rpm %postun:
# 0 = erase, 1 = upgrade).
#   remove: the virtualenv goes; data, logs, settings and the user stay.
#   purge:  also the data (database, server keys), logs, settings and user.
set -e
NAME=push-jobs-server

case "$1" in
    remove|0) remove=1; purge=0 ;;
    purge) remove=1; purge=1 ;;
    *) remove=0; purge=0 ;;
esac

if [ "$remove" = 1 ]; then
    rm -rf /opt/$NAME
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
    if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper mask $NAME.service >/dev/null || true
    fi
fi

if [ "$purge" = 1 ]; then
    if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper purge $NAME.service >/dev/null || true
        deb-systemd-helper unmask $NAME.service >/dev/null || true
    fi
    rm -rf /var/lib/$NAME /var/log/$NAME /etc/$NAME
    if getent passwd push-jobs >/dev/null; then
        userdel push-jobs >/dev/null 2>&1 || true
    fi
    if getent group push-jobs >/dev/null; then
        groupdel push-jobs >/dev/null 2>&1 || true
    fi
fi
exit 0
