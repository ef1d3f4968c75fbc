import pytest

from flextui.environment import EnvFileError, exported_from, parse_env_file, worker_environment


def test_prefixed_variables_are_exported_like_deepspeed():
    environ = {"NCCL_DEBUG": "INFO", "PYTHONPATH": "/x", "UCX_TLS": "rc", "MV2_X": "1",
               "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "MY_NCCL": "no"}
    assert exported_from(environ) == {"NCCL_DEBUG": "INFO", "PYTHONPATH": "/x", "UCX_TLS": "rc", "MV2_X": "1"}


def test_env_file_lines():
    text = "# comment\nA=1\n\n  B = two words \nC==x\nD=\n\r\n   # indented comment\n"
    assert parse_env_file(text) == {"A": "1", "B": "two words", "C": "=x", "D": ""}


def test_export_lines_as_deepspeed_files_are_written():
    text = "export NCCL_DEBUG=INFO\nexport\tB=2\nexport  C = three \nexport=4\nexports=5\n"
    assert parse_env_file(text) == {"NCCL_DEBUG": "INFO", "B": "2", "C": "three", "export": "4", "exports": "5"}


@pytest.mark.parametrize("line, message", [
    ("not a pair", "expected KEY=VALUE, got 'not a pair'"),
    ("export X", "expected KEY=VALUE, got 'export X'"),
    ("=nokey", "'' is not a variable name"),
    ("MY VAR=1", "'MY VAR' is not a variable name"),
    ("export A B=1", "'A B' is not a variable name"),
    ("1X=1", "'1X' is not a variable name"),
    ("A-B=1", "'A-B' is not a variable name"),
    ("X=a\0b", "the value of X holds a NUL byte"),
])
def test_env_file_refuses_what_no_environment_can_hold(line, message):
    with pytest.raises(EnvFileError) as excinfo:
        parse_env_file(f"# vars\nOK=1\r\n{line}\n", "/home/u/.deepspeed_env")
    assert str(excinfo.value).startswith(f"/home/u/.deepspeed_env:3: {message}")
    assert "\n" not in str(excinfo.value)


def test_cwd_file_overrides_home_file_and_cli_overrides_both(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / ".deepspeed_env").write_text("A=home\nB=home\nC=home\n")
    (cwd / ".flextui_env").write_text("B=cwd\nC=cwd\n")
    found = worker_environment({"NCCL_X": "1", "HOME": str(home)}, str(cwd), {"C": "cli"}, multi_node=True)
    assert {**found.exports, **found.env_file, **found.env} == {
        "NCCL_X": "1", "PYTHONPATH": str(cwd), "A": "home", "B": "cwd", "C": "cli"}
