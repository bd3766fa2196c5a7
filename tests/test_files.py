"""Result files: replaced whole, fsynced, created with the user's umask."""

import json
import os
import stat
import subprocess
import sys

import pytest

from hpo.files import read_json_object, replace_file, write_atomic, write_json


def test_write_atomic_replaces_whole_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, json.dumps({"v": 1}))
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with replace_file(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("crash in the middle")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    # a fresh process, so the module reads this umask at import as it would in real use
    code = ("import os, sys; os.umask(int(sys.argv[1], 8)); from hpo.files import write_json; "
            "write_json(sys.argv[2], {}); open(sys.argv[3], 'w').close()")
    subprocess.run([sys.executable, "-c", code, oct(umask), tmp_path / "ours.json",
                    tmp_path / "plain.txt"], check=True)
    ours = stat.S_IMODE(os.stat(tmp_path / "ours.json").st_mode)
    assert ours == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == mode


@pytest.mark.parametrize("text, message", [
    (None, "no such config file"), ("", "is empty"), ("{", "not valid JSON (line 1"),
    ("[1, 2]", "must hold a JSON object {...}, not a list")])
def test_read_json_object_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "c.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=r"c\.json: ") as info:
        read_json_object(path, "config file")
    assert message in str(info.value)
