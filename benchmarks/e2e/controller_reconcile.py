"""What one reconcile of the endpoints controller costs, in process, on a copy of a seeded store.

Run ``python3 benchmarks/e2e/controller_reconcile.py /work/s19seeds/seed-1000.db``
(a seed of ``programming_latency.py``); docs/benchmarks/programming_latency.md keeps figures.

The controller (:class:`lbcore.runtime.endpoints_controller.EndpointsController`) lists the
store and reconciles every service once; then, for each round:

1. **Compare**: every service is reconciled again with nothing changed: what a reconcile costs
   when it writes nothing (the desired slices and Endpoints built and compared with the stored
   ones, by digest).
2. **Write**: one pod of each of ``--writes`` services turns not ready (or ready again) through
   the status subresource, one at a time, each followed until the controller is idle: each
   makes it rewrite one EndpointSlice and one Endpoints object. Printed: the time of a reconcile
   (the two writes included) and the process's CPU per pod write (the pod's own write and
   everything the controller does after it).

The peer is the compare round itself: the write round's reconcile beside it is what the two
writes through the store cost.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lbcore.runtime.endpoints_controller import EndpointsController
from lbcore.runtime.store import Store


async def idle(controller: EndpointsController) -> None:
    """Turn the loop until the controller has nothing queued nor dirty for a few turns."""
    quiet = 0
    for _ in range(100_000):
        await asyncio.sleep(0)
        quiet = quiet + 1 if controller.backlog == 0 and not controller._dirty else 0
        if quiet >= 5:
            return
    raise RuntimeError("the endpoints controller kept a backlog")


async def measure(db: Path, service_cidr: str, rounds: int, writes: int) -> None:
    with Store(db, service_cidr=service_cidr) as store:
        controller = EndpointsController(store)
        spent = [0.0, 0]
        reconcile = controller._reconcile

        def timed(key: str) -> None:
            started = time.perf_counter()
            try:
                reconcile(key)
            finally:
                spent[0] += time.perf_counter() - started
                spent[1] += 1

        controller._reconcile = timed  # type: ignore[method-assign]
        task = asyncio.create_task(controller.run())
        cpu = time.process_time()
        await asyncio.wait_for(controller.synced.wait(), 600)
        print(f"list and first reconcile of every service: {time.process_time() - cpu:.2f} s "
              f"of CPU, {controller.writes} writes")
        services = sorted(controller._services)
        compare, write, per_write = [], [], []
        for r in range(rounds):
            spent[:] = [0.0, 0]
            before = controller.writes
            controller._dirty.update(services)
            await controller._reconcile_dirty()
            if controller.writes != before:
                raise RuntimeError("a reconcile with nothing changed wrote")
            compare.append(spent[0] / spent[1] * 1e6)
            spent[:] = [0.0, 0]
            cpu = time.process_time()
            for key in services[:writes]:
                namespace, _, name = key.partition("/")
                pod = store.get("Pod", namespace, f"{name}-{r % 10}")
                ready = [c for c in pod["status"].get("conditions") or []
                         if c.get("type") == "Ready"]
                status = "False" if not ready or ready[0].get("status") == "True" else "True"
                pod["status"]["conditions"] = [{"type": "Ready", "status": status}]
                store.update(pod, subresource="status")
                await idle(controller)
            per_write.append((time.process_time() - cpu) / writes * 1e3)
            write.append(spent[0] / max(spent[1], 1) * 1e6)
        task.cancel()
    print(f"reconcile that writes nothing: {statistics.median(compare):.0f} us "
          f"(rounds: {', '.join(f'{x:.0f}' for x in compare)})")
    print(f"reconcile that writes a slice and an Endpoints: {statistics.median(write):.0f} us "
          f"(rounds: {', '.join(f'{x:.0f}' for x in write)})")
    print(f"CPU per pod write, the controller's work included: {statistics.median(per_write):.2f}"
          f" ms (rounds: {', '.join(f'{x:.2f}' for x in per_write)})")
    print(f"RATIO reconcile that writes / reconcile that writes nothing: "
          f"{statistics.median(write) / statistics.median(compare):.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("db", type=Path, help="a store file (a seed of programming_latency.py)")
    p.add_argument("--service-cidr", default="127.55.0.0/16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--writes", type=int, default=500, help="pod writes per round")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "lbcore.db"
        shutil.copyfile(args.db, db)
        asyncio.run(measure(db, args.service_cidr, args.rounds, args.writes))


if __name__ == "__main__":
    main()
