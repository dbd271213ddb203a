#!/bin/sh
# push-jobs-client prerm (deb: remove|upgrade|...; rpm %preun: 0 = erase,
# 1 = upgrade). Stops the agent (and, through its cgroup, the jobs it runs):
# its virtualenv is rebuilt or deleted next, and the deb postinst restarts an
# enabled agent. On an rpm upgrade this runs AFTER the new package's %post
# has restarted the agent, so it must not stop it then.
set -e
# Start/stop/restart: deb-systemd-invoke under dpkg (it honours policy-rc.d,
# as Debian policy asks), systemctl under rpm.
invoke() {
    if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke "$1" push-jobs-client.service
    else
        systemctl "$1" push-jobs-client.service
    fi
}
case "$1" in
    1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
    invoke stop >/dev/null 2>&1 || true
fi
exit 0
