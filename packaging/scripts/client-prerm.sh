#!/bin/sh
# push-jobs-client prerm (deb: remove|upgrade|...; rpm %preun: 0|1).
# Stops the agent (and, through its cgroup, the jobs it runs): its virtualenv
# is rebuilt or deleted next. postinst restarts an enabled agent.
set -e
if [ -d /run/systemd/system ]; then
    systemctl stop push-jobs-client.service >/dev/null 2>&1 || true
fi
exit 0
