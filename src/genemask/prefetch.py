"""Work done ahead in a background thread: `Prefetch(make, keys, depth)` runs `make(key)` for each
key in order and keeps at most `depth` finished items waiting; `get(key)` hands them out in the
same order (a key out of order is a bug: it raises).

Pretraining assembles and masks its micro-batches this way (`pretrain.Feed`), so the device never
waits on the host between micro-batches. The items are made in the order they are used and the
producer only ever runs ahead within the keys it is given: the caller decides how far ahead is
safe (pretraining stops at every evaluation, where cm_gems's masking may change). An exception in
`make` is raised again by the `get` of its key, with its own traceback.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

_END = object()


class _Failed:
    def __init__(self, key, error: BaseException):
        self.key, self.error = key, error


class Prefetch:
    """`make(key)` for every key of `keys`, in order, in a daemon thread, at most `depth` ahead."""

    def __init__(self, make: Callable, keys: Iterable, depth: int = 2):
        self._make, self._keys = make, list(keys)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genemask-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for key in self._keys:
            try:
                item = (key, self._make(key))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised by its get()
                self._put(_Failed(key, e))
                return
            if not self._put(item):
                return
        self._put(_END)

    def get(self, key):
        """The item made for `key`, which must be the next key (blocks until it is made)."""
        got = self._queue.get()
        if got is _END:
            raise RuntimeError(f"prefetch: asked for {key!r} after the last key")
        if isinstance(got, _Failed):
            self.close()
            raise got.error
        made, item = got
        if made != key:
            raise RuntimeError(f"prefetch: asked for {key!r}, next made is {made!r}")
        return item

    def close(self) -> None:
        """Stop the producer (whatever it has not made is dropped) and wait for it."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
