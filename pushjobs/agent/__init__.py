"""pushjobs.agent: the node agent (`push-jobs-client`).

Modules:

* `main`      the CLI and the process: settings, logging, signals, whitelist reload.
* `settings`  every agent setting and its default; YAML or client.rb; FILE:LINE errors.
* `session`   one node's protocol session (config handshake, sockets, heartbeats,
              server liveness, reconfigure, backoff); reusable, no global state.
* `loop`      the single-threaded selector loop sessions run on.
* `connection` the config document and the SUB + DEALER sockets.
* `chef_http` the Chef-signed HTTP client (config GET, facts PUT).
* `jobs`      the I/O shell around `pushjobs.core.agent.AgentFSM` (checks, locks, runner).
* `whitelist` command lookup: exact, regex with quoted back-references, lock entries.
* `runner`    one job process: process group, user/dir/env/file, capture, timeouts.
* `facts`     node facts in Chef's node shape.
* `simulated` a job handler that runs nothing, for fleet simulation.

See docs/agent.md.
"""
