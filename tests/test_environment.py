from flextui.environment import exported_from, parse_env_file, worker_exports


def test_prefixed_variables_are_exported_like_deepspeed():
    environ = {"NCCL_DEBUG": "INFO", "PYTHONPATH": "/x", "UCX_TLS": "rc", "MV2_X": "1",
               "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "MY_NCCL": "no"}
    assert exported_from(environ) == {"NCCL_DEBUG": "INFO", "PYTHONPATH": "/x", "UCX_TLS": "rc", "MV2_X": "1"}


def test_env_file_lines():
    text = "# comment\nA=1\n\n  B = two words \nnot a pair\nC==x\n=nokey\n"
    assert parse_env_file(text) == {"A": "1", "B": "two words", "C": "=x"}


def test_cwd_file_overrides_home_file_and_cli_overrides_both(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / ".deepspeed_env").write_text("A=home\nB=home\nC=home\n")
    (cwd / ".flextui_env").write_text("B=cwd\nC=cwd\n")
    env = worker_exports({"NCCL_X": "1"}, str(cwd), {"C": "cli"})
    assert env == {"NCCL_X": "1", "A": "home", "B": "cwd", "C": "cli"}
