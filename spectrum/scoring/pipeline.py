"""Reading overlapped with computing.

A reader thread walks the shards in order and reads the chosen tensors into a bounded queue
(asking the source to prefetch the next shard as it starts one). The calling thread groups
them into batches and hands the batches to compute workers:

- CPU: one single-threaded worker per core, one matrix per batch. LAPACK releases the GIL,
  so threads run in parallel; stacking same-shape matrices gains nothing on CPU (torch loops
  over the batch), and one MKL call with several threads degrades badly when another process
  holds a core, while single-threaded workers just share the machine.
- CUDA: one worker, batches of same-shape matrices up to a device-memory budget: fewer
  launches and synchronisations.

Memory stays bounded: the queue holds at most a few tensors and at most `QUEUE_BYTES` of them
(one tensor always fits, however large), and pending CUDA batches are capped by a RAM budget.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Union

if TYPE_CHECKING:
    import torch

    from ..sources.dtypes import StoredArray

    Stored = Union[torch.Tensor, StoredArray]  # a torch tensor, or NumPy for the torch-free CPU route

_DONE = object()
QUEUE_BYTES = 256 << 20  # tensors read ahead of the workers, in bytes


@dataclass
class Item:
    """One tensor read from a shard, with whatever the caller attached to it (`key`)."""

    key: object
    tensor: "Stored"


class Reader:
    """A thread that reads tensors shard by shard into a queue bounded in tensors (`depth`) and in
    bytes (`max_bytes`; a tensor larger than that still goes in, alone)."""

    def __init__(self, produce: Callable[[], Iterator[tuple[object, Stored]]], depth: int,
                 max_bytes: int = QUEUE_BYTES) -> None:
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.bytes_read = 0
        self.max_bytes = max_bytes
        self.queued_bytes = 0  # bytes of the tensors in the queue
        self.peak_queued_bytes = 0
        self._room = threading.Condition()  # signalled when a tensor leaves the queue
        self._thread = threading.Thread(target=self._run, name="spectrum-reader", daemon=True)

    def _put(self, element: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(element, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _reserve(self, nbytes: int) -> bool:
        """Wait until `nbytes` more fit in the queue's byte budget (or the queue is empty), and count them."""
        with self._room:
            while self.queued_bytes and self.queued_bytes + nbytes > self.max_bytes:
                if self._stop.is_set():
                    return False
                self._room.wait(timeout=0.1)
            self.queued_bytes += nbytes
            self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        return True

    def _taken(self, nbytes: int) -> None:
        with self._room:
            self.queued_bytes -= nbytes
            self._room.notify()

    def _run(self) -> None:
        try:
            for key, tensor in self._produce():
                self.bytes_read += tensor.nbytes
                if not self._reserve(tensor.nbytes) or not self._put(Item(key, tensor)):
                    return
            self._put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(err)

    def __iter__(self) -> Iterator[Item]:
        self._thread.start()
        try:
            while True:
                element = self._queue.get()
                if element is _DONE:
                    return
                if isinstance(element, BaseException):
                    raise element
                self._taken(element.tensor.nbytes)
                yield element
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Batcher:
    """Groups items into batches: single items on CPU, same-shape groups up to a budget on CUDA."""

    def __init__(self, *, batch_bytes: int, pending_bytes: int) -> None:
        self.batch_bytes = batch_bytes
        self.pending_bytes = pending_bytes
        self._groups: dict[object, list[Item]] = {}
        self._sizes: dict[object, int] = {}

    def add(self, group: object, item: Item) -> list[list[Item]]:
        """Add an item; returns the batches that are now ready."""
        nbytes = item.tensor.nbytes
        if self.batch_bytes <= 0:
            return [[item]]
        self._groups.setdefault(group, []).append(item)
        self._sizes[group] = self._sizes.get(group, 0) + nbytes
        ready = []
        if self._sizes[group] >= self.batch_bytes:
            ready.append(self._take(group))
        while self._groups and sum(self._sizes.values()) > self.pending_bytes:
            ready.append(self._take(max(self._sizes, key=self._sizes.__getitem__)))
        return ready

    def _take(self, group: object) -> list[Item]:
        self._sizes.pop(group)
        return self._groups.pop(group)

    def flush(self) -> list[list[Item]]:
        """Every batch still pending."""
        return [self._take(group) for group in list(self._groups)]


def run_batches(
    items: Iterable[tuple[object, Item]],
    batcher: Batcher,
    compute: Callable[[list[Item]], list],
    *,
    workers: int,
    on_results: Callable[[list], None],
    worker_setup: Callable[[], None] | None = None,
) -> None:
    """Feed `(group, item)` pairs through the batcher to `workers` threads running `compute`.

    `on_results` is called in the calling thread with each batch's results, as batches finish;
    `worker_setup` once in each worker thread as it starts.
    At most `workers` batches are in flight, so memory stays bounded.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spectrum-worker", initializer=worker_setup) as pool:
        in_flight: set[Future] = set()

        def settle(block_until: int) -> None:
            nonlocal in_flight
            while len(in_flight) > block_until:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_results(future.result())

        try:
            for group, item in items:
                for batch in batcher.add(group, item):
                    settle(workers - 1)
                    in_flight.add(pool.submit(compute, batch))
            for batch in batcher.flush():
                settle(workers - 1)
                in_flight.add(pool.submit(compute, batch))
            settle(0)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
