"""`Segmenter.stream`: video in, masks out in order, with decoding and pre-processing,
inference and post-processing overlapped in worker threads, and the time each stage takes.

It sees the segmenter only through `Segmenting`, the few calls its workers make:
`segmenter.py` imports this module, so this one must not import it back.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from segexport.errors import SegexportError
from segexport.runtime.masks import Mask


class Segmenting(Protocol):
    """What the stream calls on a `Segmenter`: pre-process one frame, run a batch of
    pre-processed items, turn one into a mask."""

    @property
    def max_batch(self) -> int: ...

    def _prepare(self, index: int, image: Any, color: str | None, frame: Any) -> Any: ...

    def _run(self, items: Sequence[Any]) -> None: ...

    def _mask(self, item: Any) -> Mask: ...

    def _pipelined(self) -> Callable[[Iterable[Any]], Iterator[Any]] | None: ...


STAGES = ("decode", "pre", "infer", "post", "encode")


class StageTimes:
    """Seconds each stage spent, summed over a stream's frames (each stage has one writer
    thread; `encode` is the consumer's, added by whoever writes the masks out)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.frames = 0  # masks handed to the consumer

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def per_frame_ms(self) -> dict[str, float]:
        """Milliseconds per frame of each stage (0 before the first frame)."""
        return {stage: round(1000 * total / max(self.frames, 1), 2) for stage, total in self.seconds.items()}


class StreamItem(NamedTuple):
    number: int  # the frame's position in the source (gaps: frames dropped with drop_frames)
    frame: Any
    mask: Mask


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass(frozen=True)
class StreamOptions:
    """How `Segmenter.stream` batches, reads colour and queues frames."""

    batch: int
    color: str | None
    drop_frames: bool
    queue_size: int


class _Workers:
    """The stream's threads and queues. They never reference the `Stream` itself, so a
    consumer that breaks out of a loop and drops the stream lets it be collected, which
    stops them."""

    def __init__(self, segmenter: Segmenting, frames: Iterable[Any], options: StreamOptions) -> None:
        self.segmenter = segmenter
        self.frames = frames
        self.batch = options.batch
        self.color = options.color
        self.drop = options.drop_frames
        depth = max(options.queue_size, options.batch)
        self.stopping = threading.Event()
        self.prepared: queue.Queue[Any] = queue.Queue(maxsize=1 if options.drop_frames else depth)
        self.inferred: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.results: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.times = StageTimes()
        self.threads = [
            threading.Thread(target=self.read, name="segexport-stream-read", daemon=True),
            threading.Thread(target=self.infer, name="segexport-stream-infer", daemon=True),
            threading.Thread(target=self.post, name="segexport-stream-post", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def put(self, target: queue.Queue[Any], item: Any) -> bool:
        """Put unless the stream is stopping; False when it stopped."""
        while not self.stopping.is_set():
            try:
                target.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def put_newest(self, item: Any) -> bool:
        """drop_frames: replace a frame still waiting for inference by the newer one."""
        while not self.stopping.is_set():
            try:
                self.prepared.put_nowait(item)
                return True
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.prepared.get_nowait()
        return False

    def get(self, source: queue.Queue[Any]) -> Any:
        """The next item, or None once the stream is stopping."""
        while not self.stopping.is_set():
            try:
                return source.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def read(self) -> None:
        put = self.put_newest if self.drop else (lambda item: self.put(self.prepared, item))
        frames = iter(self.frames)
        try:
            for index in range(1 << 62):
                started = time.perf_counter()
                frame = next(frames, _END)
                decoded = time.perf_counter()
                if frame is _END:
                    break
                prepared = self.segmenter._prepare(index, frame, self.color, frame)
                self.times.add("decode", decoded - started)
                self.times.add("pre", time.perf_counter() - decoded)
                if self.stopping.is_set() or not put(prepared):
                    return
            self.put(self.prepared, _END)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self.put(self.prepared, _Failure(error))
        finally:
            close = getattr(self.frames, "close", None)
            if close is not None and self.stopping.is_set():
                close()

    def infer(self) -> None:
        pipelined = self.segmenter._pipelined() if self.batch == 1 else None
        try:
            if pipelined is not None:
                self.infer_in_flight(pipelined)
                return
            while not self.stopping.is_set():
                batch: list[Any] = []
                last = None
                while len(batch) < self.batch:
                    item = self.get(self.prepared)
                    if item is None:
                        return
                    if item is _END or isinstance(item, _Failure):
                        last = item
                        break
                    batch.append(item)
                if batch:
                    started = time.perf_counter()
                    self.segmenter._run(batch)
                    self.times.add("infer", time.perf_counter() - started)
                    for prepared in batch:
                        if not self.put(self.inferred, prepared):
                            return
                if last is not None:
                    self.put(self.inferred, last)
                    return
        except BaseException as error:
            self.put(self.inferred, _Failure(error))

    def infer_in_flight(self, pipelined: Callable[[Iterable[Any]], Iterator[Any]]) -> None:
        """Inference through the runner's own stream (TensorRT's `infer_stream`: the next frame
        uploads while the current one runs); items come back in order, outputs filled."""
        last: list[Any] = []

        def items() -> Iterator[Any]:
            while True:
                item = self.get(self.prepared)
                if item is None or item is _END or isinstance(item, _Failure):
                    last.append(item)
                    return
                yield item

        started = time.perf_counter()
        for done in pipelined(items()):
            self.times.add("infer", time.perf_counter() - started)
            if not self.put(self.inferred, done):
                return
            started = time.perf_counter()
        if last and last[0] is not None:
            self.put(self.inferred, last[0])

    def post(self) -> None:
        """Masks from the inferred items, in order, while the next frames run."""
        try:
            while not self.stopping.is_set():
                item = self.get(self.inferred)
                if item is None:
                    return
                if item is _END or isinstance(item, _Failure):
                    self.put(self.results, item)
                    return
                started = time.perf_counter()
                done = StreamItem(item.index, item.frame, self.segmenter._mask(item))
                self.times.add("post", time.perf_counter() - started)
                if not self.put(self.results, done):
                    return
        except BaseException as error:
            self.put(self.results, _Failure(error))

    def stop(self, wait: bool = True) -> None:
        self.stopping.set()
        for thread in self.threads if wait else []:
            if thread is not threading.current_thread():
                thread.join()


class Stream:
    """An iterator of `StreamItem`s that overlaps decoding/pre-processing, inference and
    post-processing.

    Three worker threads: one pulls frames and pre-processes them, one runs the network (through
    the runner's own two-frames-in-flight stream where it has one: TensorRT), one post-processes;
    the consumer only takes finished masks. Bounded queues between them keep memory flat, and
    a single thread per stage keeps frames in order; `times` sums each stage's seconds. An
    exception in any of them is raised in the consumer. Closing (or leaving a `with` block, or
    dropping the stream after `break`) stops the threads and closes the frame source if it is
    a generator.
    """

    def __init__(self, segmenter: Segmenting, frames: Iterable[Any], options: StreamOptions) -> None:
        if options.batch < 1 or options.batch > segmenter.max_batch:
            raise SegexportError(
                f"stream batch must be 1..{segmenter.max_batch} for this artifact, not {options.batch}"
            )
        self._segmenter = segmenter
        self._state = "running"  # running, finished (source exhausted) or closed
        self._workers = _Workers(segmenter, frames, options)

    def __iter__(self) -> Iterator[StreamItem]:
        return self

    def __next__(self) -> StreamItem:
        if self._state == "closed":
            raise SegexportError("this stream is closed")
        if self._state == "finished":
            raise StopIteration
        item = self._workers.get(self._workers.results)
        if item is _END:
            self._workers.stop()
            self._state = "finished"
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        self._workers.times.frames += 1
        return item

    @property
    def times(self) -> StageTimes:
        """Seconds per stage so far; the consumer adds its own (`times.add("encode", ...)`)."""
        return self._workers.times

    def close(self) -> None:
        """Stop the worker threads and wait for them; safe to call twice."""
        if self._state != "closed":
            self._state = "closed"
            self._workers.stop()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        workers = getattr(self, "_workers", None)
        if workers is not None:
            workers.stop(wait=False)
