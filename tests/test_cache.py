"""engines/cache.py, the one cache scheme (IR entries, TensorRT engines, decisions), against hostile files: a FIFO
(would hang every start), a symlink to /dev/zero (would grow without end), 200 KB of nested `[` (would crash the
parser), a record with impossible figures (would be trusted for ever), a damaged payload. Each is set aside with
one notice and rebuilt or measured again; reads are bounded in time and memory."""
from __future__ import annotations

import json
import os
import threading

import pytest

from engines.cache import DecisionStore, EntryCache, cache_key

FIELDS = {"graph": "tiny", "weights": "a" * 64, "shapes": [[1, 4]]}


class Payload:
    """A fake compiled graph: a dict saved as JSON in `payload.bin`."""

    def __init__(self):
        self.builds = 0

    def build(self):
        self.builds += 1
        return {"build": self.builds}

    @staticmethod
    def save(value, staging):
        (staging / "payload.bin").write_text(json.dumps(value))

    @staticmethod
    def load(directory):
        return json.loads((directory / "payload.bin").read_text())


def lookup(cache, payload, fields=FIELDS):
    return cache.load_or_build("tiny", fields, label="tiny graph", build=payload.build, save=payload.save,
                               load=payload.load)


def bounded(call, seconds: float = 10.0):
    """call() in a thread that must end within `seconds` (a FIFO read would block for ever)."""
    result, error = [], []
    thread = threading.Thread(target=lambda: _capture(call, result, error), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the read blocked"
    if error:
        raise error[0]
    return result[0]


def _capture(call, result, error):
    try:
        result.append(call())
    except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
        error.append(exc)


def test_the_key_is_stable_and_names_every_field():
    assert cache_key(FIELDS) == cache_key(dict(reversed(list(FIELDS.items()))))
    assert cache_key(FIELDS) != cache_key({**FIELDS, "weights": "b" * 64})


def test_miss_then_hit_and_the_fields_are_checked(tmp_path):
    cache, payload = EntryCache(tmp_path, ("payload.bin",)), Payload()
    first = lookup(cache, payload)
    assert (first.value, first.status, first.notices) == ({"build": 1}, "miss", ())
    second = lookup(cache, payload)
    assert (second.value, second.status, payload.builds) == ({"build": 1}, "hit", 1)
    directory = cache.directory("tiny", FIELDS)
    assert cache.check(directory, {**FIELDS, "weights": "b" * 64}) == ("mismatch", "built for a different weights")
    assert [p.name for p in tmp_path.iterdir()] == [directory.name]  # no staging folder left


def _meta_fifo(directory):
    (directory / "meta.json").unlink()
    os.mkfifo(directory / "meta.json")


def _meta_zero(directory):
    (directory / "meta.json").unlink()
    (directory / "meta.json").symlink_to("/dev/zero")


def _meta_nested(directory):
    (directory / "meta.json").write_text("[" * 200_000)


def _payload_zero(directory):
    (directory / "payload.bin").unlink()
    (directory / "payload.bin").symlink_to("/dev/zero")


def _payload_flipped(directory):
    data = bytearray((directory / "payload.bin").read_bytes())
    data[2] ^= 0xFF
    (directory / "payload.bin").write_bytes(bytes(data))


def _entry_is_a_file(directory):
    import shutil
    shutil.rmtree(directory)
    directory.write_text("not a folder")


@pytest.mark.parametrize("damage,reason", [
    (_meta_fifo, "FIFO"), (_meta_zero, "character device"), (_meta_nested, "nests deeper"),
    (_payload_zero, "not a regular file"), (_payload_flipped, "checksum differs"), (_entry_is_a_file, "not a folder"),
])
def test_a_hostile_entry_is_set_aside_and_rebuilt_with_one_notice(tmp_path, damage, reason):
    cache, payload = EntryCache(tmp_path, ("payload.bin",)), Payload()
    lookup(cache, payload)
    directory = cache.directory("tiny", FIELDS)
    damage(directory)
    found = bounded(lambda: lookup(cache, payload))
    assert found.status == "rebuilt" and found.value == {"build": 2}
    (notice,) = found.notices
    assert "unusable" in notice and reason in notice and "set aside" in notice
    assert [p for p in tmp_path.iterdir() if ".bad-" in p.name], "the bad entry is kept aside, never read again"
    assert lookup(cache, payload).status == "hit"


# --- decisions -----------------------------------------------------------------------------------------------------
def valid(result) -> bool:
    return isinstance(result.get("psnr_db"), float) and 0 <= result["psnr_db"] and -1 <= result["ssim"] <= 1


def test_decisions_round_trip_and_other_fields_are_another_decision(tmp_path):
    store = DecisionStore(tmp_path, notify=pytest.fail)
    assert store.load("gate", FIELDS) is None
    assert store.save("gate", FIELDS, {"psnr_db": 50.0, "ssim": 0.99})
    assert store.load("gate", FIELDS, valid) == {"psnr_db": 50.0, "ssim": 0.99}
    assert store.load("gate", {**FIELDS, "weights": "c" * 64}) is None
    assert [p.name for p in tmp_path.iterdir()] == [store.path("gate", FIELDS).name]  # no temporary file left


def _record_fifo(path):
    path.unlink()
    os.mkfifo(path)


def _record_zero(path):
    path.unlink()
    path.symlink_to("/dev/zero")


def _record_nested(path):
    path.write_text("[" * 200_000)


def _record_impossible(path):
    record = json.loads(path.read_text())
    record["result"] = {"psnr_db": -12.0, "ssim": 7.5}
    path.write_text(json.dumps(record))


def _record_lies_about_its_key(path):
    record = json.loads(path.read_text())
    record["fields"]["weights"] = "d" * 64
    path.write_text(json.dumps(record))


def _record_not_json(path):
    path.write_text("{not json")


@pytest.mark.parametrize("damage,reason", [
    (_record_fifo, "FIFO"), (_record_zero, "character device"), (_record_nested, "nests deeper"),
    (_record_impossible, "impossible values"), (_record_lies_about_its_key, "other fields"),
    (_record_not_json, "not valid JSON"),
])
def test_a_hostile_decision_is_set_aside_measured_again_and_said_once(tmp_path, damage, reason):
    said = []
    store = DecisionStore(tmp_path, notify=said.append)
    store.save("gate", FIELDS, {"psnr_db": 50.0, "ssim": 0.99})
    damage(store.path("gate", FIELDS))
    assert bounded(lambda: store.load("gate", FIELDS, valid)) is None
    (notice,) = said
    assert "gate decision" in notice and reason in notice and "measuring again" in notice
    assert not os.path.lexists(store.path("gate", FIELDS)), "set aside: the next start does not trip over it"
    assert store.save("gate", FIELDS, {"psnr_db": 51.0, "ssim": 0.98})
    assert store.load("gate", FIELDS, valid) == {"psnr_db": 51.0, "ssim": 0.98} and len(said) == 1


def test_an_unwritable_store_is_only_a_slower_next_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = DecisionStore(blocker)
    assert store.save("gate", FIELDS, {"psnr_db": 50.0, "ssim": 0.99}) is False
    assert store.load("gate", FIELDS) is None
