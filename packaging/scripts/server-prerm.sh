#!/bin/sh
# push-jobs-server prerm (deb: remove|upgrade|deconfigure|failed-upgrade;
# rpm %preun: 0 = erase, 1 = upgrade). Stops the service: its virtualenv is
# rebuilt (upgrade) or deleted (removal) next; postinst starts it again.
set -e
if [ -d /run/systemd/system ]; then
    systemctl stop push-jobs-server.service >/dev/null 2>&1 || true
fi
exit 0
