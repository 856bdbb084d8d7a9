"""A real two-node Ray cluster on this machine (``ray start --head`` plus ``ray start --address``,
each node with its own temp dir), joined with ``ray_address``: a task is indexed with work on
both nodes, each node caching the model files it received through the object store in its own
temp dir, and the index equals an in-process build.

The nodes are stopped by killing their own processes (found by their temp dirs), never with
``ray stop``, which would kill every Ray on the machine, including the local runtime other tests
use. The driver runs in a subprocess: a process joins one Ray only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.records import Samples
from shift.store.tasks import TaskStore

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
N = 512  # 8 batches of 64 per model
# Multi-node Ray must not be told to stay single-node: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# `ray start --address` refuses to add a node. With it on, Ray 2.60 resolves 127.0.0.1 to the
# machine's address, the nodes register under it and its servers listen on all interfaces: a
# loopback-only multi-node cluster is not possible; the test only ever dials 127.0.0.1.
CLUSTER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
}

DRIVER = """
import json, sys
from shift.client import Client

home, address = sys.argv[1], sys.argv[2]
with Client(home, executor="ray", ray_address=address) as c:
    rep = c.index("toy")
    import ray

    nodes = {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}
    print(json.dumps({"failed": rep.failed, "embedded": rep.embedded, "by_node": rep.nodes,
                      "nodes": nodes}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = (
                Path(f"/proc/{d}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode("utf-8", "replace")
            )
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        out[int(d)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return out


def kill_nodes(marks: list[str]) -> list[int]:
    """SIGKILL the processes whose command line names one of ``marks`` (the nodes' temp dirs)
    and all their descendants (workers, actors)."""
    procs = _procs()
    tree = {p for p, (_, cmd) in procs.items() if any(m in cmd for m in marks)}
    grew = True
    while grew:
        grew = False
        for p, (parent, _) in procs.items():
            if parent in tree and p not in tree:
                tree.add(p)
                grew = True
    tree.discard(os.getpid())
    for p in tree:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return sorted(tree)


def ray_start(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        [RAY, "start", *args], env=env, capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture
def cluster() -> Iterator[dict[str, Any]]:
    """A head node (1 CPU) and a second node (1 CPU, resource ``node_b``) on 127.0.0.1, each
    with its own temp dir (a short path: Ray's socket paths are limited to ~107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="shift_rc_", dir="/tmp"))
    dirs = {"head": base / "a", "node_b": base / "b"}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SHIFT_RAY_ADDRESS")}
    env.update(CLUSTER_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    port = free_port()
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]
    try:
        ray_start(
            [
                "--head",
                f"--port={port}",
                f"--temp-dir={dirs['head']}",
                "--include-dashboard=false",
                f"--dashboard-agent-listen-port={free_port()}",
                *common,
            ],
            env,
        )
        ray_start(
            [
                f"--address=127.0.0.1:{port}",
                f"--temp-dir={dirs['node_b']}",
                '--resources={"node_b": 1}',
                f"--dashboard-agent-listen-port={free_port()}",
                *common,
            ],
            env,
        )
        yield {"address": f"127.0.0.1:{port}", "dirs": dirs, "env": env}
    finally:
        kill_nodes([str(d) for d in dirs.values()])
        time.sleep(0.5)
        kill_nodes([str(d) for d in dirs.values()])  # anything forked meanwhile
        shutil.rmtree(base, ignore_errors=True)


def toy(n: int = N) -> Samples:
    rng = np.random.default_rng(11)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


def make_home(path: Path, files: list[Path]) -> Any:
    c = shift.connect(path, executor="inprocess")
    for i, f in enumerate(files):
        register_onnx(c.registry, f, f"c{i}", imagenet_top1=50, imagenet_source="test")
    TaskStore(c.registry).add("toy", toy(), kind="npz", source="gen")
    return c


@pytest.mark.ray
@pytest.mark.slow  # 55-85 s on the loaded 2-core box: two `ray start`s, a driver, two builds
def test_two_node_cluster_without_shared_disk(cluster: dict[str, Any], tmp_path: Path) -> None:
    files = [tmp_path / f"c{i}.onnx" for i in range(2)]
    for i, f in enumerate(files):
        build_tiny_cnn(f, seed=20 + i)
    with make_home(tmp_path / "cluster", files) as c:
        shas = sorted(m.sha256 for m in c.models("all"))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "cluster"), cluster["address"]],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {} and out["embedded"] == {"c0": N, "c1": N}
    assert len(out["nodes"]) == 2 and any("node_b" in r for r in out["nodes"].values())
    # work ran on both nodes: every batch once, each node some of them
    assert set(out["by_node"]) == set(out["nodes"])
    assert sum(out["by_node"].values()) == 2 * N // 64 and min(out["by_node"].values()) >= 1
    print("batches per node:", {n[:12]: k for n, k in out["by_node"].items()})
    # each node keeps the models it received in its own temp dir, by sha256
    for d in cluster["dirs"].values():
        cached = sorted({p.stem for p in (d / "shift-models").glob("*.onnx")})
        assert cached and set(cached) <= set(shas), (d, cached)
    # the index equals an in-process build
    with make_home(tmp_path / "local", files) as c:
        want = c.engine.index("toy", c.models("all"))
    with shift.connect(tmp_path / "cluster", executor="inprocess") as c:
        got = c.engine.index("toy", c.models("all"))
        assert sorted(c.engine.last_report.reused) == ["c0", "c1"]
    for name in ("c0", "c1"):
        assert got[name].sample_ids == want[name].sample_ids
        np.testing.assert_allclose(
            np.asarray(got[name].vectors), np.asarray(want[name].vectors), atol=1e-5
        )
