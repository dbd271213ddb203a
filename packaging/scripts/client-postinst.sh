#!/bin/sh
# push-jobs-client postinst (deb: configure [old-version]; rpm %post: 1|2).
#
# Builds the private virtualenv /opt/push-jobs-client from the wheels the
# package carries (offline: pip --no-index), with the system's python3.
# The unit is NOT enabled on a first install: the shipped
# push-jobs-client.yml names no server yet. The push_jobs cookbook (or the
# operator, after editing the file) enables and starts it. On an upgrade a
# running agent is restarted.
set -e

NAME=push-jobs-client
VENV=/opt/$NAME
WHEELS=/usr/share/$NAME/wheels

case "$1" in
    configure|1|2) ;;
    *) exit 0 ;;
esac

# Start/stop/restart: deb-systemd-invoke under dpkg (it honours policy-rc.d,
# as Debian policy asks), systemctl under rpm.
invoke() {
    if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke "$1" $NAME.service
    else
        systemctl "$1" $NAME.service
    fi
}

py=$(command -v python3.11 || command -v python3 || true)
if [ -z "$py" ]; then
    echo "$NAME: python3 (3.11) not found" >&2
    exit 1
fi
rm -rf "$VENV"
# No pip inside the virtualenv: the package owns it. pip runs from the
# wheel the package carries (a documented way to run pip), which is
# also much faster than ensurepip. A host-wide pip configuration (index,
# constraints) must not leak in: empty environment, no config file.
"$py" -m venv --without-pip "$VENV"
pip_whl=$(ls "$WHEELS"/pip-*.whl | head -n 1)
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CONFIG_FILE=/dev/null \
    "$VENV/bin/python" "$pip_whl/pip" install --quiet --no-index --no-cache-dir \
    --disable-pip-version-check --find-links "$WHEELS" "$WHEELS"/pushjobs-*.whl

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if systemctl --quiet is-enabled $NAME.service 2>/dev/null; then
        invoke restart || echo "$NAME: the service did not start; see journalctl -u $NAME" >&2
    fi
fi
exit 0
