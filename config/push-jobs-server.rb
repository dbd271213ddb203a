# /etc/push-jobs-server/push-jobs-server.rb -- push-jobs-server settings.
#
# This file is PARSED, never evaluated as Ruby: each line is `key value`
# (also accepted: `key = value`, `key(value)`, and the original's
# `opscode_pushy_server['key'] = value`). Values are Ruby literals: integers,
# floats, 'strings' or "strings", true/false, nil, arrays and hashes.
#
# Every setting is listed below, commented out, with its default. Uncomment a
# line to change it. The package installs this file as a conffile: upgrades
# never overwrite your edits (dpkg asks, rpm writes .rpmnew).
#
# Durations keep the original server's units: milliseconds for the
# settings heartbeat_interval and rehab_timer, seconds for all others.
# After editing: `systemctl reload push-jobs-server` (SIGHUP: the file is
# re-read and the worker process replaced -- jobs in flight end as after a
# crash) or `systemctl restart push-jobs-server`.
# `push-jobs-server-ctl show-config` prints the effective values and where
# each one came from.

## --- Network -------------------------------------------------------------

# Host name the server advertises to nodes in the config handshake (they
# connect their heartbeat SUB and command DEALER sockets to it). Default: this
# host's fully qualified domain name.
# server_name "push.example.com"

# Bind prefix of the ZeroMQ heartbeat PUB and command ROUTER sockets.
# zeromq_listen_address "tcp://*"

# Port of the heartbeat PUB socket (nodes subscribe here).
# server_heartbeat_port 10000

# Port of the command ROUTER socket (CurveZMQ-encrypted unless disabled).
# command_port 10002

# ZeroMQ I/O threads.
# zmq_io_processes 1

# Port and bind address of the REST API (knife-push / pushjobs CLI, config
# handshake, event feeds).
# api_port 10003
# api_listen_address "0.0.0.0"

# TLS for the REST API: both set = HTTPS; both nil = plain HTTP (put a TLS
# reverse proxy in front).
# ssl_certificate nil
# ssl_certificate_key nil

## --- Liveness and heartbeats ------------------------------------------------

# Server heartbeat period in milliseconds; nodes heartbeat at the same rate.
# heartbeat_interval 1000

# Liveness: a node's decaying heartbeat average over decay_window intervals
# must stay above down_threshold; checked every detect_offline_nodes_interval
# heartbeat intervals.
# decay_window 4
# down_threshold 0.6
# detect_offline_nodes_interval 4

# Milliseconds between repeated aborts sent to a node in rehab.
# rehab_timer 1000

## --- Jobs -------------------------------------------------------------------

# Seconds to wait for the nodes' commit votes before marking the laggards
# unavailable.
# voting_timeout 60

# Default run timeout of a job in seconds (a job's own run_timeout wins).
# default_running_timeout 3600

# Seconds a finished job lingers so that event-feed readers see its end.
# wait_complete_time 5

# Default age in days for `push-jobs-server-ctl purge-jobs` (nil: the verb
# needs --older-than). Nothing is purged automatically: run purge-jobs from
# cron or a timer.
# job_retention_days nil

# Captured output kept per node and channel, in bytes; longer output is
# truncated.
# max_output_bytes 1048576

## --- Protocol -----------------------------------------------------------------

# Largest ZeroMQ message body accepted, in bytes (also told to nodes).
# max_body_size 65536

# Lifetime of a node's configuration (session key), in seconds.
# config_lifetime 3600

# Allowed clock skew of signed messages, in seconds.
# max_message_skew 300

# Seconds a node's CurveZMQ public key stays admissible after it asked for
# its configuration.
# zap_key_lifetime 60

# true: no CurveZMQ on the command socket (only for old 1.x clients; the
# command channel is then signed but not encrypted).
# disable_curve_encryption false

# A client may only fetch the configuration of the node with its own name.
# validate_client_node_name true

## --- Event feeds ----------------------------------------------------------------

# Seconds between SSE keepalive comments.
# keep_alive_time 15

# Seconds the organization feed keeps events for clients that reconnect.
# org_feed_expiration 60

## --- Storage and logs ---------------------------------------------------------

# Directory of the SQLite database and the server's keys (owned by the
# push-jobs user).
# data_dir "/var/lib/push-jobs-server"

# Database: nil = the SQLite file in data_dir; or a PostgreSQL URL such as
# "postgresql://pushjobs:secret@127.0.0.1:5432/pushjobs".
# database_url nil

# PostgreSQL connections kept open (unused with SQLite).
# db_pool_size 20

# debug, info, warning or error.
# log_level "info"
