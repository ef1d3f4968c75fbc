"""flextui.launch.check: the preflight every node launcher runs before it starts anything."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from flextui.launch import check
from tests.helpers import free_port


def test_script_found_and_missing(tmp_path):
    (tmp_path / "train.py").write_text("")
    assert check({"cwd": str(tmp_path), "script": "train.py", "need_psutil": True}) == []
    assert check({"cwd": str(tmp_path), "script": str(tmp_path / "train.py")}) == []
    assert check({"cwd": str(tmp_path), "script": "nope.py"}) == [f"script nope.py not found in {tmp_path}"]
    assert check({"cwd": str(tmp_path / "gone"), "script": "train.py"}) == [
        f"working directory {tmp_path / 'gone'} not found"]


def test_programs_for_no_python(tmp_path):
    run = tmp_path / "run.sh"
    run.write_text("#!/bin/sh\n")
    cwd = str(tmp_path)
    assert check({"cwd": cwd, "script": "./run.sh", "no_python": True}) == [
        "program ./run.sh not found or not executable"]
    run.chmod(0o755)
    assert check({"cwd": cwd, "script": "./run.sh", "no_python": True}) == []
    assert check({"cwd": cwd, "script": "true", "no_python": True}) == []  # on PATH
    assert check({"cwd": cwd, "script": "no-such-prog-xyz", "no_python": True}) != []


def test_module_is_looked_up_without_importing_it_into_the_console(tmp_path):
    pkg = tmp_path / "fx_pkg_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(__file__).with_name('imported-by').write_text(str(os.getpid()))\n")
    (pkg / "train.py").write_text("")
    path_before = list(sys.path)
    assert check({"cwd": str(tmp_path), "script": "fx_pkg_probe.train", "module": True}) == []
    assert sys.path == path_before, "the job's directory must not stay on the console's sys.path"
    assert "fx_pkg_probe" not in sys.modules
    assert int((pkg / "imported-by").read_text()) != os.getpid()
    assert check({"cwd": str(tmp_path), "script": "fx_pkg_probe.nope", "module": True}) == [
        "module fx_pkg_probe.nope not found"]


def test_a_package_that_fails_to_import_is_a_problem_not_a_crash(tmp_path):
    pkg = tmp_path / "fx_pkg_broken"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('boom')\n")
    (pkg / "train.py").write_text("")
    assert check({"cwd": str(tmp_path), "script": "fx_pkg_broken.train", "module": True}) == [
        "module fx_pkg_broken.train not found"]


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"),
                                             (socket.AF_INET6, "::1"), (socket.AF_INET6, "::")])
def test_master_port_in_use(tmp_path, family, address):
    with socket.socket(family) as busy:
        busy.bind((address, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert check({"cwd": str(tmp_path), "master_port": port}) == [f"master port {port} is already in use"]
    port = free_port()
    assert check({"cwd": str(tmp_path), "master_port": port}) == []
