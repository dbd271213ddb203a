#!/bin/sh
# push-jobs-client postrm (deb: remove|purge|upgrade|...; rpm %postun: 0|1).
#   remove: the virtualenv goes, the settings stay.  purge: the settings too.
set -e
NAME=push-jobs-client

case "$1" in
    remove|0)
        rm -rf /opt/$NAME
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload >/dev/null 2>&1 || true
        fi
        ;;
    purge)
        rm -rf /opt/$NAME /etc/$NAME
        if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
            deb-systemd-helper purge $NAME.service >/dev/null || true
        fi
        ;;
esac
exit 0
