"""The Ray engine: each cell a Ray task with its CPU and GPU share, on one host or a cluster.

``address``: None starts a local Ray on this machine (every core and GPU it has); "auto"
joins the cluster this machine belongs to (``ray start --head`` ran here or
``RAY_ADDRESS`` is set); ``HOST:PORT`` joins a cluster's head node. When this process
already called ``ray.init``, that session is used as it is. A Ray started here is shut
down at the end; one joined or found is left running.

Retries are the coordinator's: a task that raised, or whose worker died (killed, out of
memory, its node lost), is submitted again up to ``retries`` times, then recorded as
failed. Workers must be able to import ``ssmlens`` (install it on every node; a local
Ray's workers inherit this process's environment, ``PYTHONPATH`` included) and reach the
paths and URLs in the cells' arguments (shared storage on a cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ssmlens.interp.engines.cells import Cell, CellOutcome, EngineError, attempt, error_line


def _run_in_worker(fn, kwargs):
    """The task body: one attempt of a cell, exceptions returned as data (a cell's
    exception type need not be importable, or picklable, in the coordinator)."""
    return attempt(fn, kwargs)


def connect(address: str | None) -> bool:
    """``ray.init`` unless this process is already connected; True when it started Ray."""
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray needs Ray: pip install 'ssmlens[ray]' (or pip install ray)") from None
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        ray.init(include_dashboard=False)
        return True
    _probe(address)
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EngineError(f"cannot join the Ray cluster at {address!r}: {error_line(e)}") from None
    return True


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail at once on a HOST:PORT nobody listens on (ray.init would wait for it for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", ray:// client addresses: Ray resolves and reports them itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EngineError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({e}); start it "
                          "with `ray start --head` on that host, or check --address") from None


def cluster_gpus(address: str | None) -> float:
    """GPUs of the Ray cluster at ``address`` (connects first; a local start stays up)."""
    connect(address)
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _check_resources(cells: Sequence[Cell], gpus_of: Callable[[Cell], float]) -> None:
    """Refuse cells that no node could ever run (they would wait forever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most = {r: max((n.get(r, 0.0) for n in nodes), default=0.0) for r in ("CPU", "GPU")}
    for cell in cells:
        for resource, need in (("CPU", cell.cpus), ("GPU", gpus_of(cell))):
            if need > most[resource] + 1e-9:
                have = f"at most {most[resource]:g}" if most[resource] else "none"
                raise EngineError(
                    f"cell {cell.key!r} asks for {need:g} {resource} but the Ray cluster's nodes have {have}; "
                    f"lower --gpus-per-task / the cell's share, or add nodes that have them")


def run_ray(cells: Sequence[Cell], *, address: str | None, gpus_per_task: float | None, retries: int,
            report: Callable[[CellOutcome], None]) -> None:
    """Run ``cells`` as Ray tasks; ``report(outcome)`` in this process as each finishes."""
    started = connect(address)
    import ray

    def gpus_of(cell: Cell) -> float:
        return float(cell.gpus if gpus_per_task is None else gpus_per_task)

    try:
        _check_resources(cells, gpus_of)
        task = ray.remote(_run_in_worker)
        pending: dict = {}

        def submit(cell: Cell, n: int, errors: list[str]) -> None:
            ref = task.options(num_cpus=cell.cpus, num_gpus=gpus_of(cell), max_retries=0,
                               name=f"ssmlens:{cell.key}"[:200]).remote(cell.fn, cell.kwargs)
            pending[ref] = (cell, n, errors)  # errors: the earlier attempts' one-line errors

        for cell in cells:
            submit(cell, 1, [])
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell, n, errors = pending.pop(ref)
                    try:
                        status, value, detail, seconds = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker died, ran out of memory, ...
                        status, value, detail, seconds = "failed", error_line(e), str(e), 0.0
                    if status == "done":
                        report(CellOutcome(cell.key, "done", result=value, attempts=n, seconds=seconds,
                                           earlier_errors=errors))
                    elif n <= retries:
                        submit(cell, n + 1, [*errors, value])
                    else:
                        report(CellOutcome(cell.key, "failed", error=value, attempts=n, seconds=seconds,
                                           detail=detail, earlier_errors=errors))
        except BaseException:
            for ref in pending:  # interrupted: free the cluster
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
