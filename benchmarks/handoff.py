"""What handing a job to a worker thread and the answer back to the loop costs.

    taskset -c 0 python -m benchmarks.handoff [--in-flight 10]

A plain thread fed by a `queue.SimpleQueue` that answers with `call_soon_threadsafe` (what
dualgate's ThreadPool does) against `loop.run_in_executor` with a ThreadPoolExecutor, both with
8 threads, on asyncio and on uvloop when installed. Pin it to one core to see the per-core cost.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

TOTAL = 20000
THREADS = 8


async def by_queue(in_flight: int) -> float:
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
    finished: asyncio.Future[None] = loop.create_future()
    done = 0

    def work() -> None:
        while (job := jobs.get()) is not None:
            loop.call_soon_threadsafe(job)

    def complete() -> None:
        nonlocal done
        done += 1
        if done == TOTAL:
            finished.set_result(None)
        elif done + in_flight <= TOTAL:
            jobs.put(complete)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    for _ in range(in_flight):
        jobs.put(complete)
    await finished
    elapsed = time.perf_counter() - started
    for _ in threads:
        jobs.put(None)
    return elapsed / TOTAL * 1e6


async def by_executor(in_flight: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(THREADS) as executor:

        async def one_stream() -> None:
            for _ in range(TOTAL // in_flight):
                await loop.run_in_executor(executor, int)

        started = time.perf_counter()
        await asyncio.gather(*(one_stream() for _ in range(in_flight)))
        return (time.perf_counter() - started) / TOTAL * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=10, help="jobs in flight at once")
    args = parser.parse_args()
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    try:
        import uvloop

        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    for name, factory in loops:
        with asyncio.Runner(loop_factory=factory) as runner:
            queued = runner.run(by_queue(args.in_flight))
            executor = runner.run(by_executor(args.in_flight))
        print(
            f"{name}, {args.in_flight} in flight: queue-fed thread {queued:.1f} µs per hand-off "
            f"and back, run_in_executor {executor:.1f} µs"
        )


if __name__ == "__main__":
    main()
