"""A restarting trial reads its checkpoint from a copy of its own.

PBT hands every trial that exploits a donor a copy of the donor's ``Checkpoint``, and copies share the
id that ``Checkpoint.to_directory()`` names its download folder after: two trials restoring at once
downloaded into one folder, the second rewriting ``model.keras`` while the first was loading it (EOFError).
"""

import copy
import os
import shutil

import pytest
from ray import tune

from tl_ray.tune.trainable import TuneReporter, private_copy


@pytest.fixture
def donor(tmp_path):
    folder = tmp_path / "store" / "checkpoint_000003"
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(os.urandom(1 << 20))
    (folder / "state.json").write_text('{"epoch": 3}')
    return tune.Checkpoint.from_directory(str(folder))


def test_copies_of_one_checkpoint_download_into_folders_of_their_own(donor):
    first, second = copy.copy(donor), copy.copy(donor)
    a = private_copy(first)
    inode = (a / "model.keras").stat().st_ino
    b = private_copy(second)
    try:
        assert a != b
        # The second download left the first one's files alone: same file, same bytes.
        assert (a / "model.keras").stat().st_ino == inode
        assert (a / "model.keras").read_bytes() == (b / "model.keras").read_bytes()
        with open(os.path.join(donor.path, "model.keras"), "rb") as stored:
            assert (a / "model.keras").read_bytes() == stored.read()
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


def test_a_reporter_restores_from_its_own_copy_and_removes_it_when_the_trial_ends(donor, monkeypatch):
    monkeypatch.setattr(tune, "get_checkpoint", lambda: copy.copy(donor))
    with TuneReporter() as one, TuneReporter() as other:
        mine, theirs = one.restore_dir(), other.restore_dir()
        assert mine != theirs and mine != donor.path
        assert one.restore_dir() == mine  # asked again within the trial: the same copy
        assert (mine / "state.json").read_text() == '{"epoch": 3}'
    assert not mine.exists() and not theirs.exists()
    assert os.path.exists(os.path.join(donor.path, "model.keras"))  # the stored checkpoint stays


def test_a_trial_with_nothing_to_restore_gets_none(monkeypatch):
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    with TuneReporter() as reporter:
        assert reporter.restore_dir() is None
