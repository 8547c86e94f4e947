"""Which engine runs a pipeline: in-process by default, a Dask cluster, or any runner Beam can import.

    textok encode --captions runs/cap --output runs/data --encoder /models/t5 \
        --runner dask --dask-local-workers 4                      # a local cluster, for this command only
    textok encode ... --runner dask --dask_client_address tcp://scheduler:8786   # a running cluster
    textok prepare ... --runner apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address ...

Dask runs here offline, so it is how the pipeline's distributed behaviour is tested. Beam's
DaskRunner (2.77) translates a pipeline into one dask.bag graph, and that translation has gaps
a pipeline must stay clear of (found by running it, see tests/test_dask_runner.py):

- tagged outputs are merged: every consumer of any tag of a ParDo receives all its outputs;
- only the last leaf of the graph is computed: a second sink (e.g. a dead-letter writer) never runs;
- elements a DoFn emits from `finish_bundle` are dropped (side effects there still happen);
- `beam.io.Read` sources (ReadFromText, ReadFromParquet) become no-ops; only `beam.Create` reads;
- `PipelineResult.metrics()` raises NotImplementedError ("collecting metrics will come later!");
- `beam.Create` puts 128 elements in a partition, so a graph of a few dozen units runs on one worker.

So every textok stage is one linear chain `Create(units) | Reshuffle | ParDo... ` that writes its
outputs as side effects of `process` and emits downstream only from `process`; that shape
runs the same on every runner. `TextokDaskRunner` adds what the plain runner lacks for a
command-line tool: one partition per unit (the scheduler balances units, not blocks of 128),
a local cluster started and stopped for the run (`--dask-local-workers N`), and the client
closed when the run ends (otherwise a closing cluster leaves it reconnecting for 30 s).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
from typing import Iterator, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

log = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
ALIASES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}
LOCAL_WORKERS_FLAG = "--dask-local-workers"


class LocalDaskOptions(PipelineOptions):
    """Registers `--dask-local-workers` with Beam's option parser (so the option check accepts it,
    and it reaches `make_pipeline` through the same `beam_args` as every Beam option)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(LOCAL_WORKERS_FLAG, "--dask_local_workers", dest="dask_local_workers", type=int,
                            default=None, help="With --runner dask: start a local Dask cluster of N worker "
                                               "processes for this run and stop it afterwards.")


def runner_arg(args: Sequence[str]) -> str | None:
    """The value of `--runner` in a raw argument list (last one wins, as in argparse), or None."""
    found = None
    args = list(args)
    for i, a in enumerate(args):
        if a == "--runner" and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith("--runner="):
            found = a.split("=", 1)[1]
    return found


def qualified_runner(name: str | None) -> str | None:
    """`dask` -> Beam's DaskRunner path; a Beam short name (DataflowRunner, flink) -> its path; else as given."""
    if not name:
        return name
    from apache_beam.runners.runner import _RUNNER_MAP

    low = name.lower()
    return ALIASES.get(low) or _RUNNER_MAP.get(low) or _RUNNER_MAP.get(low + "runner") or name


def is_dask(name: str | None) -> bool:
    return qualified_runner(name) == DASK_RUNNER


def load_runner_options(args: Sequence[str]) -> None:
    """Import the module of the runner named on the command line, so the PipelineOptions classes it
    defines (DaskRunner's --dask_client_address, a third-party runner's own flags) are known to
    Beam's parser before the option check runs. Raises ValueError naming the fix if it cannot."""
    name = qualified_runner(runner_arg(args))
    if not name or "." not in name:
        return
    module = name.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as e:
        hint = ('pip install "dask[distributed]"' if name == DASK_RUNNER
                else 'pip install "apache-beam[gcp]"' if "dataflow" in module else f"install the package of {module}")
        raise ValueError(f"--runner {runner_arg(args)}: cannot import {module} ({e}); {hint}") from e


def local_workers(options: PipelineOptions) -> int | None:
    n = options.view_as(LocalDaskOptions).dask_local_workers
    if n is not None and n < 1:
        raise ValueError(f"{LOCAL_WORKERS_FLAG} must be >= 1, got {n}")
    return n


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[str]:
    """A Dask scheduler + `n_workers` worker processes (one thread each) on 127.0.0.1; yields its
    address and stops it on exit. Each worker is a separate process, so a model loads once per
    worker (pipeline/worker_shared.py) and a killed worker is restarted by its nanny."""
    from dask.distributed import LocalCluster

    # distributed logs every scheduler/worker event at INFO; keep them out unless `textok -v`
    quiet = logging.getLogger("distributed")
    quiet.setLevel(min(logging.getLogger().getEffectiveLevel(), logging.WARNING))
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=":0", scheduler_kwargs={"dashboard": False},
                           silence_logs=logging.ERROR)
    log.info("dask: local cluster %s with %d worker processes", cluster.scheduler_address, n_workers)
    try:
        yield cluster.scheduler_address
    finally:
        # Every output is committed by now; a worker slow to exit (torch's teardown) is killed by
        # its nanny after 4 s with a warning that says nothing to the user.
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            cluster.close()
        finally:
            quiet.setLevel(level)


@contextlib.contextmanager
def command_cluster(args: list[str]) -> Iterator[list[str]]:
    """For a command (which may run several pipelines, as `textok prepare` does): with
    `--dask-local-workers N`, start one local cluster for the whole command and hand the stages
    `--dask_client_address` instead; yields the (possibly rewritten) Beam arguments."""
    options = PipelineOptions(list(args))
    n = local_workers(options)
    if n is None:
        yield list(args)
        return
    if not is_dask(options.view_as(StandardOptions).runner):
        raise ValueError(f"{LOCAL_WORKERS_FLAG} needs --runner dask")
    if options.get_all_options().get("address") or options.get_all_options().get("scheduler_file"):
        raise ValueError(f"give {LOCAL_WORKERS_FLAG} or --dask_client_address/--dask_scheduler_file, not both")
    with local_cluster(n) as address:
        yield [*_without_local_workers(args), "--dask_client_address", address]


def _without_local_workers(args: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in (LOCAL_WORKERS_FLAG, "--dask_local_workers"):
            skip = True
        elif not a.startswith((LOCAL_WORKERS_FLAG + "=", "--dask_local_workers=")):
            out.append(a)
    return out


def create_sizes(pipeline) -> list[int]:
    """Element counts of every `beam.Create` in the pipeline (the units of work of a textok stage)."""
    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor

    sizes: list[int] = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node) -> None:
            if isinstance(node.transform, beam.Create):
                sizes.append(len(node.transform.values))

        def enter_composite_transform(self, node) -> None:
            self.visit_transform(node)

    pipeline.visit(Visitor())
    return sizes


def dask_runner():
    """Beam's DaskRunner with one partition per unit, an optional local cluster, and a result that
    closes its client (and cluster) when the run ends or fails."""
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner, DaskRunnerResult

    class TextokDaskResult(DaskRunnerResult):
        def __init__(self, client, futures, cluster_cm=None):
            super().__init__(client, futures)
            self._cluster_cm = cluster_cm

        def wait_until_finish(self, duration=None):
            try:
                return super().wait_until_finish(duration)
            finally:
                self.client.close()
                if self._cluster_cm is not None:
                    self._cluster_cm.__exit__(None, None, None)

    class TextokDaskRunner(DaskRunner):
        def run_pipeline(self, pipeline, options):
            dask_opts = options.view_as(DaskOptions)
            if dask_opts.npartitions is None and dask_opts.partition_size is None:
                sizes = create_sizes(pipeline)
                dask_opts.npartitions = max(1, max(sizes, default=1))  # one unit of work per Dask task
            cluster_cm = None
            n = local_workers(options)
            if n is not None:
                if dask_opts.address or dask_opts.scheduler_file:
                    raise ValueError(f"give {LOCAL_WORKERS_FLAG} or --dask_client_address, not both")
                cluster_cm = local_cluster(n)
                dask_opts.address = cluster_cm.__enter__()
            try:
                result = super().run_pipeline(pipeline, options)
            except BaseException:
                if cluster_cm is not None:
                    cluster_cm.__exit__(None, None, None)
                raise
            return TextokDaskResult(result.client, result.futures, cluster_cm)

    return TextokDaskRunner()
