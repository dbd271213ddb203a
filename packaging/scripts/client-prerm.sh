#!/bin/sh
# push-jobs-client prerm (deb: remove|upgrade|...; rpm %preun: 0 = erase,
# 1 = upgrade). Stops the agent (and, through its cgroup, the jobs it runs):
# its virtualenv is rebuilt or deleted next, and the deb postinst restarts an
# enabled agent. On an rpm upgrade this runs AFTER the new package's %post
# has restarted the agent, so it must not stop it then.
set -e
case "$1" in
    1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl stop push-jobs-client.service >/dev/null 2>&1 || true
fi
exit 0
