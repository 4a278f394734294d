"""engines/files.py: the one way small files are read - regular files only, size-capped, never blocking, JSON of
bounded depth."""
import json
import os
import time

import pytest

from engines.files import FileRefused, load_json, nesting_depth, read_bounded, read_text, set_aside


def test_a_regular_file_within_the_limit_is_read(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"secret\n")
    assert read_bounded(path, 16, what="token file") == b"secret\n"
    assert read_text(path, 16) == "secret\n"


def test_a_file_over_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with pytest.raises(FileRefused, match=r"token file .*big has 101 bytes, more than the 100"):
        read_bounded(path, 100, what="token file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX only")
def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(FileRefused, match="not a regular file \\(a FIFO\\)"):
        read_bounded(fifo, 100)
    assert time.monotonic() - start < 1.0


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_a_symlink_to_an_endless_device_is_refused(tmp_path):
    link = tmp_path / "verdict.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(FileRefused, match="character device"):
        read_bounded(link, 1 << 20)


def test_folders_missing_files_and_binary_text_are_refused(tmp_path):
    with pytest.raises(FileRefused, match="folder"):
        read_bounded(tmp_path, 100)
    with pytest.raises(FileRefused, match="does not exist"):
        read_bounded(tmp_path / "nope", 100)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FileRefused, match="not utf-8 text"):
        read_text(tmp_path / "bin", 100)


def test_json_nesting_is_counted_before_parsing(tmp_path):
    assert nesting_depth('{"a": [1, {"b": "[[[[ not counted ]"}]}') == 3
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)  # json.loads would hit the recursion limit
    with pytest.raises(FileRefused, match="nests deeper than 32"):
        load_json(deep, 1 << 20)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"fields": {"a": [1, 2]}, "result": {"psnr_db": 40.0}}))
    assert load_json(good, 1 << 20)["result"]["psnr_db"] == 40.0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FileRefused, match="not valid JSON"):
        load_json(tmp_path / "bad.json", 100)


def test_a_bad_entry_is_set_aside_beside_itself(tmp_path):
    path = tmp_path / "entry.json"
    path.write_text("[[[")
    moved = set_aside(path)
    assert not path.exists() and moved is not None and moved.parent == tmp_path
    assert moved.name.startswith("entry.json.bad-") and moved.read_text() == "[[["


def test_a_missing_file_is_file_missing_and_an_unknown_user_is_one_line(tmp_path):
    from engines.files import FileMissing, user_path
    with pytest.raises(FileMissing):
        read_bounded(tmp_path / "nope", 100)
    with pytest.raises(FileRefused, match="cannot expand ~nosuchuser-la") as info:
        read_bounded("~nosuchuser-la/token", 100, what="token file")
    assert "\n" not in str(info.value)
    assert str(user_path("plain/name")) == "plain/name"


def test_toml_nesting_is_counted_outside_strings_and_comments(tmp_path):
    from engines.files import load_toml, toml_nesting_depth
    text = ('a = [[1], [2]]  # [[[[ a comment\nb = "[[[\\"[["\nc = \'[[[\'\nd = """\n[[[\n"""\n[t]\n'
            'e = {f = [1]}\n')
    assert toml_nesting_depth(text) == 2
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")  # tomllib would hit the recursion limit
    with pytest.raises(FileRefused, match="nests deeper than 32"):
        load_toml(deep, 1 << 16)
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeffa = 1\n".encode("utf-8"))
    assert load_toml(bom, 100) == {"a": 1}
    (tmp_path / "bad.toml").write_text("a = \n")
    with pytest.raises(FileRefused, match="not valid TOML"):
        load_toml(tmp_path / "bad.toml", 100)
