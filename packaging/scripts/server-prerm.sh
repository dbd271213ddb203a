#!/bin/sh
# push-jobs-server prerm (deb: remove|upgrade|deconfigure|failed-upgrade;
# rpm %preun: 0 = erase, 1 = upgrade).
# Stops the service: its virtualenv is rebuilt (deb upgrade: the new
# postinst starts it again) or deleted (removal). On an rpm upgrade this runs
# AFTER the new package's %post has already rebuilt and restarted it, so it
# must not stop it then.
set -e
case "$1" in
    1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl stop push-jobs-server.service >/dev/null 2>&1 || true
fi
exit 0
