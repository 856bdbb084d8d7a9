"""Start-up cost of a command: the CPU time (user + system, ``getrusage`` of the finished child)
of whole ``shift-cli`` processes beside ``python -c "import numpy"``, run in turn (A B A B ...)
so that each ratio is taken between neighbouring runs on a busy machine.

The commands read a small real home: ``shift-cli init`` and ``shift-cli models import
torchvision --all`` (114 metadata rows) in a temporary folder. Measured: a cached agnostic query
(``SELECT top 5 FROM pool all RANK BY agnostic``: nothing to compute) and ``models list``, each
with its output piped (plain text) and on a terminal (a pseudo-terminal, 100 columns: tables).
Bytecode is cached as after ``pip install`` (a temporary ``PYTHONPYCACHEPREFIX``, written by the
warm-up runs), for the yardstick too.

    python -m benchmarks.bench_startup [--runs 15] [--label after]
    python -m benchmarks.bench_startup --src /tmp/before --label before --note "commit ..."

``--src DIR`` measures the ``shift`` package found in DIR (e.g. ``git archive HEAD shift | tar -x
-C DIR``) instead of the installed one. Each label's figures are kept side by side in
``benchmarks/results/startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result

QUERY = "SELECT top 5 FROM pool all RANK BY agnostic"
YARDSTICK = [sys.executable, "-c", "import numpy"]


def shift_cli() -> list[str]:
    """``shift-cli`` of this interpreter's environment (``python -m shift`` where there is none)."""
    script = Path(sys.executable).with_name("shift-cli")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "shift"]


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # the terminal's other end closed
        pass


def run_once(cmd: list[str], env: dict[str, str], terminal: bool) -> tuple[float, float, int]:
    """(cpu s, wall s, exit code) of one whole process; output piped away or to a terminal."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    if terminal:
        master, slave = pty.openpty()
        reader = threading.Thread(target=_drain, args=(master,), daemon=True)
        reader.start()
        try:
            rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        finally:
            os.close(slave)
            reader.join(timeout=10)
            os.close(master)
        code = rc.returncode
    else:
        out = subprocess.DEVNULL
        code = subprocess.run(cmd, env=env, stdin=out, stdout=out, stderr=out).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, code


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def compare(
    cmd: list[str], env: dict[str, str], terminal: bool, runs: int, warmup: int
) -> dict[str, Any]:
    """``cmd`` and the yardstick in turn; CPU and wall spreads, and the paired CPU ratios."""
    for _ in range(warmup):
        for c in (cmd, YARDSTICK):
            run_once(c, env, terminal)
    a_cpu, a_wall, b_cpu, ratios = [], [], [], []
    for _ in range(runs):
        cpu, wall, code = run_once(cmd, env, terminal)
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {code}")
        y_cpu, _, _ = run_once(YARDSTICK, env, terminal)
        a_cpu.append(cpu)
        a_wall.append(wall)
        b_cpu.append(y_cpu)
        ratios.append(cpu / y_cpu)
    return {
        "cpu_s": _spread(a_cpu),
        "wall_s": _spread(a_wall),
        "import_numpy_cpu_s": _spread(b_cpu),
        "ratio_to_import_numpy": _spread(ratios),
    }


def build_home(home: Path, env: dict[str, str]) -> None:
    for args in (["init", str(home)], ["models", "import", "torchvision", "--all"]):
        subprocess.run(
            [*shift_cli(), *args], env=env, check=True, stdout=subprocess.DEVNULL, timeout=600
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--src", type=Path, help="measure the shift package found in this folder")
    ap.add_argument("--label", default="after", help="the key of these figures in the results")
    ap.add_argument("--note", default="", help="what was measured (e.g. the commit)")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="shift-startup-"))
    here = Path.cwd()
    os.chdir(tmp)  # outside any checkout: the shift measured is the one named by --src or installed
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(
            PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
            SHIFT_HOME=str(tmp / "home"),
            COLUMNS="100",
            LINES="50",
        )
        if args.src is not None:
            env["PYTHONPATH"] = str(args.src.resolve())
        where = subprocess.run(
            [sys.executable, "-c", "import shift; print(shift.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        build_home(tmp / "home", env)  # by the code measured: its own schema
        commands = {
            "query_agnostic": [*shift_cli(), "query", QUERY],
            "models_list": [*shift_cli(), "models", "list"],
        }
        figures: dict[str, Any] = {}
        for name, cmd in commands.items():
            for terminal in (False, True):
                key = f"{name}_{'terminal' if terminal else 'piped'}"
                figures[key] = compare(cmd, env, terminal, args.runs, args.warmup)
                r = figures[key]
                print(
                    f"{args.label:>7} {key:<24} cpu {r['cpu_s']['median']:.3f} s  "
                    f"numpy {r['import_numpy_cpu_s']['median']:.3f} s  "
                    f"ratio {r['ratio_to_import_numpy']['median']:.2f}x "
                    f"[{r['ratio_to_import_numpy']['min']:.2f}-"
                    f"{r['ratio_to_import_numpy']['max']:.2f}]",
                    flush=True,
                )
    finally:
        os.chdir(here)
        shutil.rmtree(tmp, ignore_errors=True)

    path = RESULTS / "startup.json"
    previous = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
    previous[args.label] = {
        "shift": where,
        "note": args.note,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": args.runs,
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "commands": {k: " ".join(v[1:]) for k, v in commands.items()},
        "figures": figures,
    }
    data = {
        "what": "CPU seconds (user + system) of whole processes, each beside "
        '`python -c "import numpy"` run in turn; ratio = command / yardstick, pair by pair; '
        "home: init + models import torchvision --all (114 metadata rows); bytecode cached",
        "target": "cached agnostic query and models list <= 2x import numpy (issue 21, item 1)",
        "runs": previous,
    }
    write_result("startup", data)
    return data


if __name__ == "__main__":
    main()
