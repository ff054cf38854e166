"""The configuration file watch: a change is reloaded once it holds still; a Kubernetes-style
`..data` symlink swap is a change; a vanished file is not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgslirp.runtime.filewatch import FileWatch, Identity, file_identity


class FakeFile:
    def __init__(self) -> None:
        self.ident: Identity | None = (1, 100, 5, 10)

    def __call__(self, _path: str) -> Identity | None:
        return self.ident


def make(states: FakeFile, calls: list[float], interval: float = 2.0) -> FileWatch:
    return FileWatch("/etc/wg.conf", interval, calls.append, 0.0, identity=states)


def test_reloads_after_the_change_held_still_for_one_poll() -> None:
    f, calls = FakeFile(), []
    w = make(f, calls)
    assert w.get_timer() == 2.0
    w.handle_timer(2.0)
    assert calls == []  # unchanged
    f.ident = (1, 101, 6, 12)
    w.handle_timer(4.0)
    assert calls == []  # seen once: maybe still being written
    w.handle_timer(6.0)
    assert calls == [6.0]
    w.handle_timer(8.0)
    w.handle_timer(10.0)
    assert calls == [6.0]  # one reload per change


def test_a_file_still_changing_waits() -> None:
    f, calls = FakeFile(), []
    w = make(f, calls)
    for i, size in enumerate((11, 12, 13)):
        f.ident = (1, 100, 6 + i, size)
        w.handle_timer(2.0 * (i + 1))
    assert calls == []
    w.handle_timer(8.0)
    assert calls == [8.0]


def test_vanished_file_keeps_the_running_configuration() -> None:
    f, calls = FakeFile(), []
    w = make(f, calls)
    f.ident = None
    for t in (2.0, 4.0, 6.0):
        w.handle_timer(t)
    assert calls == []
    f.ident = (1, 100, 5, 10)  # back as it was: nothing to do
    w.handle_timer(8.0)
    w.handle_timer(10.0)
    assert calls == []


def test_early_calls_do_nothing_and_interval_must_be_positive() -> None:
    f, calls = FakeFile(), []
    w = make(f, calls)
    f.ident = (9, 9, 9, 9)
    w.handle_timer(1.0)
    w.handle_timer(1.5)
    assert w.get_timer() == 2.0 and calls == []
    with pytest.raises(ValueError):
        FileWatch("/x", 0.0, calls.append, 0.0)


def test_kubernetes_symlink_swap_changes_the_identity(tmp_path: Path) -> None:
    """kubelet's layout: wg0.conf -> ..data/wg0.conf, ..data -> ..<timestamp>/; an update
    writes a new timestamped directory and renames a new ..data link over the old one."""

    def publish(version: str, text: str) -> None:
        d = tmp_path / f"..{version}"
        d.mkdir()
        (d / "wg0.conf").write_text(text)
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(d.name)
        os.replace(tmp_link, tmp_path / "..data")

    publish("2026_01", "[Interface]\nPrivateKey = a\n")
    (tmp_path / "wg0.conf").symlink_to("..data/wg0.conf")
    path = str(tmp_path / "wg0.conf")
    before = file_identity(path)
    assert before is not None
    calls: list[float] = []
    w = FileWatch(path, 1.0, calls.append, 0.0)
    w.handle_timer(1.0)
    publish("2026_02", "[Interface]\nPrivateKey = b\n")  # same size, same second
    after = file_identity(path)
    assert after is not None and after != before
    w.handle_timer(2.0)
    w.handle_timer(3.0)
    assert calls == [3.0]
    assert file_identity(str(tmp_path / "missing.conf")) is None
