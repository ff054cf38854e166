"""PROCESSOR_WORKERS unset fits the CPUs the process may use: affinity mask and cgroup quota,
read from a fake /proc + /sys tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from wgslirp.config import load_config
from wgslirp.config.cpus import (
    MAX_AUTO_WORKERS,
    cgroup_quota,
    usable_cpus,
    workers_for_cpus,
)


def v2_tree(root: Path, cgroup: str, cpu_max: dict[str, str]) -> Path:
    """A unified hierarchy: /proc/self/cgroup names `cgroup`; `cpu_max` maps a cgroup path
    (relative to /sys/fs/cgroup, "" for the root) to its cpu.max text."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(f"0::{cgroup}\n")
    fs = root / "sys/fs/cgroup"
    (fs / cgroup.strip("/")).mkdir(parents=True, exist_ok=True)
    for rel, text in cpu_max.items():
        d = fs / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(text + "\n")
    return root


def v1_tree(root: Path, cgroup: str, quota: int, period: int = 100000) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(
        f"12:memory:{cgroup}\n4:cpu,cpuacct:{cgroup}\n1:name=systemd:{cgroup}\n"
    )
    d = root / "sys/fs/cgroup/cpu,cpuacct" / cgroup.strip("/")
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_mapping_inline_up_to_two_cpus_then_one_per_cpu_minus_ingress() -> None:
    assert [workers_for_cpus(n) for n in (1, 2, 3, 4, 5)] == [0, 0, 2, 3, 4]
    assert workers_for_cpus(64) == MAX_AUTO_WORKERS


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path) is None
    assert usable_cpus(tmp_path, affinity=lambda: 6) == 6
    assert usable_cpus(tmp_path, affinity=lambda: 2) == 2


def test_v2_cpu_max_limits_and_rounds_up(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "/kubepods/pod1/c1", {"kubepods/pod1/c1": "150000 100000"})
    assert cgroup_quota(root) == 1.5
    assert usable_cpus(root, affinity=lambda: 16) == 2


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "/a", {"": "max 100000", "a": "max 100000"})
    assert cgroup_quota(root) is None
    assert usable_cpus(root, affinity=lambda: 12) == 12


def test_v2_tightest_ancestor_wins(tmp_path: Path) -> None:
    root = v2_tree(
        tmp_path, "/kubepods/pod1/c1", {"kubepods": "300000 100000", "kubepods/pod1/c1": "max"}
    )
    assert cgroup_quota(root) == 3.0
    assert usable_cpus(root, affinity=lambda: 16) == 3


def test_v2_inside_a_cgroup_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    # /proc/self/cgroup names a path that does not exist under the (namespaced) mount
    root = v2_tree(tmp_path, "/", {"": "400000 100000"})
    (root / "proc/self/cgroup").write_text("0::/../../host/path\n")
    assert usable_cpus(root, affinity=lambda: 16) == 4


def test_affinity_below_the_quota_wins(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "/c", {"c": "800000 100000"})
    assert usable_cpus(root, affinity=lambda: 3) == 3


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, "/docker/abc", 250000)
    assert cgroup_quota(root) == 2.5
    assert usable_cpus(root, affinity=lambda: 8) == 3


def test_v1_unlimited(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, "/docker/abc", -1)
    assert cgroup_quota(root) is None


@pytest.mark.parametrize("junk", ["", "garbage", "0 100000", "-5 100000", "100000 0"])
def test_unreadable_cpu_max_is_no_limit(tmp_path: Path, junk: str) -> None:
    root = v2_tree(tmp_path, "/c", {"c": junk})
    assert cgroup_quota(root) is None


def _load(env: dict[str, str], cpus: int) -> int:
    cfg = load_config(
        {"HOME": "/nonexistent", **env}, resolve=lambda h: "192.0.2.1", cpus=lambda: cpus
    )
    return cfg.processor_workers


def test_unset_picks_inline_on_two_cpus_and_workers_above() -> None:
    assert _load({}, 2) == 0
    assert _load({}, 1) == 0
    assert _load({}, 4) == 3
    # an empty value is unset, as for every setting
    assert _load({"PROCESSOR_WORKERS": ""}, 5) == 4


def test_explicit_value_wins() -> None:
    assert _load({"PROCESSOR_WORKERS": "4"}, 2) == 4
    assert _load({"PROCESSOR_WORKERS": "0"}, 16) == 0


def test_this_machine_with_a_faked_cgroup(tmp_path: Path) -> None:
    """The whole chain from files: a pod limited to 4 CPUs on a 16-CPU node gets 3
    workers; the same pod limited to 2 runs inline."""
    root = v2_tree(tmp_path, "/pod", {"pod": "400000 100000"})
    assert _load({}, usable_cpus(root, affinity=lambda: 16)) == 3
    (root / "sys/fs/cgroup/pod/cpu.max").write_text("200000 100000\n")
    assert _load({}, usable_cpus(root, affinity=lambda: 16)) == 0


def test_this_machine_when_it_has_two_cpus_or_fewer_runs_inline() -> None:
    """The project's 2-core machine, read for real (affinity and its own cgroup)."""
    n = usable_cpus()
    if n > 2:
        pytest.skip(f"this machine lets the process use {n} CPUs")
    cfg = load_config({"HOME": "/nonexistent"}, resolve=lambda h: "192.0.2.1")
    assert cfg.processor_workers == 0
