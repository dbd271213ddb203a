#!/bin/sh
# push-jobs-server postinst (deb: configure [old-version]; rpm %post: 1|2).
#
# 1. Builds the private virtualenv /opt/push-jobs-server from the wheels the
#    package carries (offline: pip --no-index), with the system's python3.
# 2. Creates the state and log directories, owned by push-jobs.
# 3. First install only: `push-jobs-server-ctl init` as push-jobs (database,
#    schema, server keys -- so the key files belong to that user).
# 4. Enables the unit; starts (or restarts) it when systemd is running. In a
#    chroot or container without systemd this step is skipped.
set -e

NAME=push-jobs-server
VENV=/opt/$NAME
WHEELS=/usr/share/$NAME/wheels
CONF=/etc/$NAME/$NAME.rb

case "$1" in
    configure) if [ -z "$2" ]; then first=1; else first=0; fi ;;
    1) first=1 ;;
    2) first=0 ;;
    abort-upgrade|abort-remove|abort-deconfigure) exit 0 ;;
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

build_venv() {
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
}

build_venv

install -d -o push-jobs -g push-jobs -m 0750 /var/lib/$NAME /var/log/$NAME

if [ "$first" = 1 ]; then
    # The settings may hold a database password: readable by the service only.
    if [ -f "$CONF" ]; then
        chgrp push-jobs "$CONF"
        chmod 0640 "$CONF"
    fi
    (cd / && runuser -u push-jobs -- "$VENV/bin/push-jobs-server-ctl" init)
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    # Debian: the helper records the enablement even without a running
    # systemd (chroots, image builds), exactly as dh_installsystemd does.
    deb-systemd-helper unmask $NAME.service >/dev/null || true
    if deb-systemd-helper --quiet was-enabled $NAME.service; then
        deb-systemd-helper enable $NAME.service >/dev/null || true
    else
        deb-systemd-helper update-state $NAME.service >/dev/null || true
    fi
    if [ "$first" = 1 ]; then
        deb-systemd-helper enable $NAME.service >/dev/null || true
    fi
elif command -v systemctl >/dev/null 2>&1 && [ "$first" = 1 ]; then
    systemctl enable $NAME.service >/dev/null 2>&1 || true
fi
if [ -d /run/systemd/system ] && \
   { [ "$first" = 1 ] || systemctl --quiet is-enabled $NAME.service 2>/dev/null; }; then
    invoke restart || echo "$NAME: the service did not start; see journalctl -u $NAME" >&2
fi
exit 0
