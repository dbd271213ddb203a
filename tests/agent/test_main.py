"""push-jobs-client command line: the original's spellings, -v, -h, errors."""
import pytest

from pushjobs.agent.main import build_parser, main


@pytest.mark.parametrize("argv,dest,value", [
    (["--allow_unencrypted"], "allow_unencrypted", True),
    (["--allow-unencrypted"], "allow_unencrypted", True),
    (["-c", "/x.rb"], "config", "/x.rb"),
    (["--config", "/x.yml"], "config", "/x.yml"),
    (["-d", "/d"], "file_dir", "/d"),
    (["--file_dir", "/d"], "file_dir", "/d"),
    (["-file_dir", "/d"], "file_dir", "/d"),
    (["--file-dir", "/d"], "file_dir", "/d"),
    (["-k", "/k.pem"], "client_key", "/k.pem"),
    (["--client-key", "/k.pem"], "client_key", "/k.pem"),
    (["--client_key", "/k.pem"], "client_key", "/k.pem"),
    (["-l", "debug"], "log_level", "debug"),
    (["--log_level", "warn"], "log_level", "warn"),
    (["-L", "/log"], "log_location", "/log"),
    (["--logfile", "/log"], "log_location", "/log"),
    (["-N", "web1"], "node_name", "web1"),
    (["--node-name", "web1"], "node_name", "web1"),
    (["-S", "https://h/organizations/o"], "chef_server_url", "https://h/organizations/o"),
    (["--server", "https://h/organizations/o"], "chef_server_url", "https://h/organizations/o"),
    (["-M", "1000"], "max_body_size", 1000),
    (["--max-body-size", "1000"], "max_body_size", 1000),
])
def test_option_spellings(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_version(capsys):
    assert main(["-v"]) == 0
    assert capsys.readouterr().out.startswith("Push Client: ")
    assert main(["--version"]) == 0


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-h"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--allow_unencrypted", "--file_dir", "--client-key", "--log_level", "--logfile",
                "--node-name", "--server", "--max-body-size", "--version"):
        assert opt in out


def test_missing_server_url_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "a.yml"
    cfg.write_text("node_name: n\n")
    assert main(["-c", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "push-jobs-client: chef_server_url is not set (use -S or the settings file)"


def test_cli_url_without_org_and_missing_key(capsys, tmp_path):
    cfg = tmp_path / "a.yml"
    cfg.write_text("")
    assert main(["-c", str(cfg), "-S", "https://h/"]) == 1
    assert "/organizations/ORG_NAME" in capsys.readouterr().err
    assert main(["-c", str(cfg), "-S", "https://h/organizations/o", "-k", str(tmp_path / "k")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bad_client_rb_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "client.rb"
    cfg.write_text("chef_server_url 'https://h/organizations/o'\nfile_dir 42\n")
    assert main(["-c", str(cfg)]) == 1
    assert capsys.readouterr().err.strip() == f"{cfg}:2: file_dir: expected a non-empty string, got 42"


def test_bad_cli_value(capsys, tmp_path):
    cfg = tmp_path / "a.yml"
    cfg.write_text("chef_server_url: https://h/organizations/o\n")
    assert main(["-c", str(cfg), "-M", "0"]) == 1
    assert "max_body_size" in capsys.readouterr().err


def test_unreadable_client_rb_whitelist_exits_1(capsys, tmp_path):
    cfg = tmp_path / "client.rb"
    cfg.write_text("chef_server_url 'https://h/organizations/o'\nwhitelist(YAML.load_file('/x'))\n")
    assert main(["-c", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{cfg}:2: cannot read the whitelist")
    assert "\n" not in err


def test_missing_ca_file_exits_1(capsys, tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("not checked before the CA file\n")
    cfg = tmp_path / "a.yml"
    cfg.write_text(f"chef_server_url: https://h/organizations/o\nclient_key: {key}\n"
                   f"ca_file: {tmp_path / 'nope.pem'}\n")
    assert main(["-c", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"push-jobs-client: ca_file {tmp_path / 'nope.pem'} does not exist")
    assert "\n" not in err
