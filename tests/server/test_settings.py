"""Server settings: defaults, the settings file (each syntax, each error), provenance, file lookup."""

from __future__ import annotations

import os

import pytest

from pushjobs.server import settings as settings_mod
from pushjobs.server.settings import (
    CONFIG_ENV,
    Settings,
    SettingsError,
    effective_settings,
    find_config_path,
    load_settings,
    render_value,
    setting_names,
)


def write(tmp_path, text, name="push-jobs-server.rb"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_are_the_seeds():
    s = Settings()
    assert (s.command_port, s.server_heartbeat_port, s.api_port) == (10002, 10000, 10003)
    assert (s.heartbeat_interval, s.keep_alive_time, s.org_feed_expiration, s.wait_complete_time) == (1000, 15, 60, 5)
    assert s.zeromq_listen_address == "tcp://*"
    assert s.data_dir == "/var/lib/push-jobs-server"
    assert s.resolved_database_url() == "sqlite:////var/lib/push-jobs-server/push-jobs-server.sqlite3"
    assert "provenance" not in setting_names() and "config_path" not in setting_names()


def test_test_instance_file(tmp_path):
    """What the issue says a test instance needs, literally (bare IP included)."""
    path = write(tmp_path, f"""data_dir "{tmp_path}/data"
server_name 127.0.0.1
zeromq_listen_address "tcp://127.0.0.1"
server_heartbeat_port 20000
command_port 20002
api_port 20003
""")
    s = load_settings(path, env={})
    assert s.server_name == "127.0.0.1"
    assert (s.server_heartbeat_port, s.command_port, s.api_port) == (20000, 20002, 20003)
    assert s.config_path == path
    assert s.provenance["api_port"] == f"{path}:6"
    assert s.source_of("voting_timeout") == "default"
    assert s.resolved_database_url() == f"sqlite:///{tmp_path}/data/push-jobs-server.sqlite3"


def test_every_syntax(tmp_path):
    path = write(tmp_path, """# comment
heartbeat_interval 150          # key value
voting_timeout = 2              # key = value
pushy_server['keep_alive_time'] = 3
opscode_pushy_server["org_feed_expiration"] = 4
push_jobs_server['wait_complete_time'] = 0
down_threshold 0.5
disable_curve_encryption true
validate_client_node_name false
job_retention_days 30
ssl_certificate nil
log_level :debug
database_url 'postgresql://u:p@db.example.com:5432/pushy'
""")
    s = load_settings(path, env={})
    assert (s.heartbeat_interval, s.voting_timeout, s.keep_alive_time, s.org_feed_expiration) == (150, 2, 3, 4)
    assert s.wait_complete_time == 0
    assert s.down_threshold == 0.5
    assert s.disable_curve_encryption is True and s.validate_client_node_name is False
    assert s.job_retention_days == 30 and s.ssl_certificate is None
    assert s.log_level == "debug" and type(s.log_level) is str
    assert s.database_url.startswith("postgresql://")
    assert s.provenance["keep_alive_time"] == f"{path}:4"


def test_integer_for_a_float_setting(tmp_path):
    s = load_settings(write(tmp_path, "down_threshold 1\n"), env={})
    assert s.down_threshold == 1.0 and isinstance(s.down_threshold, float)


def test_later_line_wins(tmp_path):
    path = write(tmp_path, "api_port 11000\napi_port 11001\n")
    s = load_settings(path, env={})
    assert s.api_port == 11001 and s.provenance["api_port"] == f"{path}:2"


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("api_port 10003\nbogus_key 1\n", 2, "unknown setting 'bogus_key'"),
        ("api_port '10003'\n", 1, "api_port must be an integer, got a string '10003'"),
        ("api_port 70000\n", 1, "api_port must be a port number 1-65535, got 70000"),
        ("command_port 0\n", 1, "port number"),
        ("heartbeat_interval -5\n", 1, "heartbeat_interval must be positive"),
        ("voting_timeout 1.5\n", 1, "voting_timeout must be an integer, got a float"),
        ("heartbeat_interval 0\n", 1, "must be positive"),
        ("wait_complete_time -1\n", 1, "must not be negative"),
        ("down_threshold 2\n", 1, "down_threshold must be in (0, 1]"),
        ("disable_curve_encryption 'yes'\n", 1, "must be true or false"),
        ("log_level 'chatty'\n", 1, "log_level must be one of"),
        ("zeromq_listen_address 'tcp://*:10000'\n", 1, "no port"),
        ("zeromq_listen_address 'udp://x'\n", 1, "zeromq_listen_address must look like"),
        ("data_dir 'relative/dir'\n", 1, "data_dir must be an absolute path"),
        ("database_url 'mysql://x/y'\n", 1, "database_url must be"),
        ("server_name nil\n", 1, "server_name cannot be nil"),
        ("server_name [1, 2]\n", 1, "server_name must be a string, got an array"),
        ("\n\nmax_body_size\n", 3, "has no value"),
        ("require 'evil'\n", 1, "not supported"),
        ("api_port File.read('/etc/passwd')\n", 1, "not supported"),
        ("foo['api_port'] = 1\n", 1, "unknown section 'foo'"),
        ("api_port 1000\ncommand_port 1000\n", 2, "api_port and command_port are both 1000"),
        ("ssl_certificate '/etc/c.pem'\n", 1, "ssl_certificate_key is not"),
        ("opscode_pushy_server['vip'] = 5\n", 1, "vip (alias of server_name): server_name must be a string"),
    ],
)
def test_errors_are_one_line_with_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as ei:
        load_settings(path, env={})
    msg = str(ei.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert message in msg
    assert "\n" not in msg


def test_the_originals_file_is_accepted_as_is(tmp_path, caplog):
    path = write(tmp_path, """# /etc/opscode-push-jobs-server/opscode-push-jobs-server.rb
opscode_pushy_server['heartbeat_interval'] = 10000        # ms
opscode_pushy_server['vip'] = '10.0.0.5'
opscode_pushy_server['server_name_advertised'] = 'push.example.com'
opscode_pushy_server['log_rotation']['num_to_keep'] = 10
opscode_pushy_server['enable_graphite'] = false
postgresql['vip'] = '127.0.0.1'
""", name="opscode-push-jobs-server.rb")
    s = load_settings(path, env={})
    assert s.heartbeat_interval == 10000
    assert s.server_name == "push.example.com"  # server_name_advertised wins over vip
    assert s.provenance["server_name"] == f"{path}:4 (as server_name_advertised)"
    assert s.provenance["postgresql.vip"] == f"{path}:7 (ignored)"
    assert s.provenance["log_rotation.num_to_keep"].endswith("(ignored)")
    assert any("postgresql['vip'] ignored" in r.getMessage() for r in caplog.records)


def test_vip_alone_is_the_server_name(tmp_path):
    path = write(tmp_path, "opscode_pushy_server['vip'] = '10.0.0.5'\n")
    s = load_settings(path, env={})
    assert s.server_name == "10.0.0.5" and s.provenance["server_name"] == f"{path}:1 (as vip)"


def test_file_lookup_order(tmp_path, monkeypatch):
    ours = tmp_path / "ours.rb"
    legacy = tmp_path / "legacy.rb"
    monkeypatch.setattr(settings_mod, "DEFAULT_CONFIG_PATH", str(ours))
    monkeypatch.setattr(settings_mod, "LEGACY_CONFIG_PATH", str(legacy))
    assert find_config_path(None, env={}) is None
    s = load_settings(None, env={})
    assert s.config_path is None and s.provenance == {} and s.api_port == 10003
    legacy.write_text("opscode_pushy_server['api_port'] = 11111\n")
    assert load_settings(None, env={}).api_port == 11111  # the original's file when ours is absent
    ours.write_text("api_port 12222\n")
    assert load_settings(None, env={}).api_port == 12222
    envfile = write(tmp_path, "api_port 13333\n", name="env.rb")
    assert load_settings(None, env={CONFIG_ENV: envfile}).api_port == 13333
    explicit = write(tmp_path, "api_port 14444\n", name="explicit.rb")
    assert load_settings(explicit, env={CONFIG_ENV: envfile}).api_port == 14444


def test_named_file_must_exist(tmp_path):
    missing = str(tmp_path / "nope.rb")
    with pytest.raises(SettingsError, match="no such settings file") as ei:
        load_settings(missing, env={})
    assert str(ei.value).startswith(missing)
    with pytest.raises(SettingsError, match="no such settings file"):
        load_settings(None, env={CONFIG_ENV: missing})
    with pytest.raises(SettingsError, match="is a directory"):
        load_settings(str(tmp_path), env={})


def test_effective_settings_for_show_config(tmp_path):
    path = write(tmp_path, f"data_dir '{tmp_path}'\n")
    rows = {k: (v, src) for k, v, src in effective_settings(load_settings(path, env={}))}
    assert rows["data_dir"] == (str(tmp_path), f"{path}:1")
    assert rows["database_url"] == (f"sqlite:///{tmp_path}/push-jobs-server.sqlite3",
                                    "default (SQLite file in data_dir)")
    assert rows["server_name"][1] == "default (this host's FQDN)"
    assert set(rows) == set(setting_names())


@pytest.mark.parametrize("value", [1, 1.5, True, False, None, "a \"q\" \\ b", "127.0.0.1"])
def test_render_value_parses_back(tmp_path, value):
    from pushjobs import rbconfig

    assert rbconfig.parse(f"k {render_value(value)}")[0].value == value


def test_replace_keeps_type():
    s = Settings().replace(api_port=1)
    assert isinstance(s, Settings) and s.api_port == 1
    assert os.path.basename(s.server_private_key_path) == "pushy_priv.pem"


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

_LINES = st.lists(
    st.tuples(
        st.sampled_from(setting_names() + ["vip", "server_name_advertised", "bogus", "pushy_server['api_port'] ="]),
        st.one_of(st.integers(-5, 70000), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                  st.none(), st.text(max_size=12), st.lists(st.integers(), max_size=2)),
    ),
    max_size=6,
)


@hsettings(max_examples=200, deadline=None)
@given(_LINES)
def test_any_settings_file_loads_or_fails_in_one_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("s") / "s.rb"
    path.write_text("".join(f"{k} {render_value(v) if not isinstance(v, list) else v!r}\n" for k, v in lines))
    try:
        s = load_settings(str(path), env={})
    except SettingsError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert 1 <= s.api_port <= 65535 and s.heartbeat_interval > 0
