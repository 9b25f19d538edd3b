"""Executors: they only schedule tasks and hand back results as tasks finish.

``local``: spawned worker processes on this machine. ``ray``: tasks on a Ray cluster
(``ray_address``; by default a local Ray instance is started), each retried a bounded
number of times if its worker dies. Both run the same functions on the same work units, so
their outputs are byte-identical. Workers get one BLAS / OpenMP thread each.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

SINGLE_THREAD_ENV = {n: "1" for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
EXECUTORS = ("local", "ray")
# tasks submitted and unfinished per local worker: enough to keep every worker busy, few enough
# that a long task list holds no future, argument copy or result per task (issue #28)
TASKS_IN_FLIGHT_PER_WORKER = 4


@contextmanager
def _single_threaded_env() -> Iterator[None]:
    old = {n: os.environ.get(n) for n in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for n, v in old.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _worker_init() -> None:
    import warnings

    import cv2

    cv2.setNumThreads(1)
    warnings.simplefilter("ignore")


class Executor:
    """Runs batches of tasks on one pool (local processes or Ray) that lives as long as the
    ``with`` block, so a run's stages share it instead of each starting its own."""

    def __init__(self, workers: int, executor: str = "local", ray_address: str | None = None, retries: int = 2):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
        self.workers, self.executor, self.ray_address, self.retries = workers, executor, ray_address, retries
        self._pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)
            self._pool = None

    def _local_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                initializer=_worker_init)
        return self._pool

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[tuple[int, Any, BaseException | None]]:
        """Run ``fn(*task)`` for every task; yield (task index, result, exception) as they finish.

        Local: at most TASKS_IN_FLIGHT_PER_WORKER x workers tasks are submitted at a time."""
        if not tasks:
            return
        if self.executor == "ray":
            yield from _run_ray(fn, tasks, self.workers, self.ray_address, self.retries)
            return
        pool = self._local_pool()
        todo = iter(enumerate(tasks))
        window = TASKS_IN_FLIGHT_PER_WORKER * max(1, self.workers)
        pending: dict[cf.Future, int] = {}

        def fill() -> None:
            with _single_threaded_env():  # workers start on submit and inherit the environment then
                while len(pending) < window:
                    nxt = next(todo, None)
                    if nxt is None:
                        return
                    pending[pool.submit(fn, *nxt[1])] = nxt[0]

        try:
            fill()
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                finished = [(pending.pop(fut), fut) for fut in done]
                del done
                fill()  # the workers go on while the caller handles these results
                while finished:
                    i, fut = finished.pop(0)
                    exc = fut.exception()
                    yield i, (None if exc else fut.result()), exc
                    del fut  # no finished result outlives its turn
        except BaseException:  # the consumer stopped (an error, a full disk): start nothing new
            for fut in pending:
                fut.cancel()
            raise


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], *, workers: int, executor: str = "local",
              ray_address: str | None = None, retries: int = 2) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Run ``fn(*task)`` for every task on a pool of its own; yield (index, result, exception)."""
    with Executor(workers, executor, ray_address, retries) as ex:
        yield from ex.run(fn, tasks)


def ensure_ray(ray_address: str | None, workers: int):
    """Connect to ``ray_address``, or start a local Ray instance with ``workers`` CPUs."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'ray>=2.9'") from None
    if not ray.is_initialized():
        kw: dict[str, Any] = {"address": ray_address} if ray_address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": dict(SINGLE_THREAD_ENV)}, **kw)
    return ray


def _run_ray(fn, tasks, workers, ray_address, retries):
    ray = ensure_ray(ray_address, workers)
    remote = ray.remote(max_retries=retries, retry_exceptions=False)(fn)
    refs = {remote.remote(*t): i for i, t in enumerate(tasks)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                yield refs[ref], ray.get(ref), None
            except Exception as exc:  # a task that failed after its retries
                yield refs[ref], None, exc
