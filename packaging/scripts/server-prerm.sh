#!/bin/sh
# push-jobs-server prerm (deb: remove|upgrade|deconfigure|failed-upgrade;
# rpm %preun: 0 = erase, 1 = upgrade).
# Stops the service: its virtualenv is rebuilt (deb upgrade: the new
# postinst starts it again) or deleted (removal). On an rpm upgrade this runs
# AFTER the new package's %post has already rebuilt and restarted it, so it
# must not stop it then.
set -e
# Start/stop/restart: deb-systemd-invoke under dpkg (it honours policy-rc.d,
# as Debian policy asks), systemctl under rpm.
invoke() {
    if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke "$1" push-jobs-server.service
    else
        systemctl "$1" push-jobs-server.service
    fi
}
case "$1" in
    1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
    invoke stop >/dev/null 2>&1 || true
fi
exit 0
