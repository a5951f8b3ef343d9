"""Micro-batching: requests that arrive together share one model call.

A single worker task takes the first waiting request, then gathers more for at most
``max_wait_ms`` (or until ``max_batch``), and runs ``handler(batch)`` in one dedicated thread, so
the event loop keeps accepting connections while the model works and the model is never called
from two threads at once. Under load the batch fills while the previous one runs, so waiting
adds no latency then; a lone request waits at most ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


MAX_BATCH, MAX_WAIT_MS, MAX_QUEUE = 32, 5.0, 1024  # defaults of `recfm serve`


class Overloaded(RuntimeError):
    """More requests are waiting than the queue holds: the client should retry later (503)."""


class WorkerStopped(RuntimeError):
    """The worker task that runs the model is gone: no request can be answered (503)."""


class MicroBatcher:
    def __init__(self, handler: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = MAX_BATCH,
                 max_wait_ms: float = MAX_WAIT_MS, max_queue: int = MAX_QUEUE):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.handler = handler
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recfm-model")
        self.batches = 0
        self.requests = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue(self.max_queue)
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        """The handler's answer for ``item``; an exception the handler raised for the batch is re-raised
        in every request of that batch."""
        if self.queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if self.worker is None or self.worker.done():  # never wait on a worker that is gone
            raise WorkerStopped("the model worker has stopped; restart the server")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.max_queue} requests are already waiting; retry shortly") from None
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]  # clients that hung up
            if not live:
                continue
            self.batches += 1
            self.requests += len(live)
            try:
                results = await loop.run_in_executor(self.executor, self.handler, [item for item, _ in live])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request; the worker lives on
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
