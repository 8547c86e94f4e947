"""Pipeline options: the local default runs in-process and never downloads Prism.

Beam's DirectRunner first tries the Prism runner, which downloads a Go binary at run time.
We use the FnApiRunner (what DirectRunner falls back to) directly unless the user names a
runner; every other Beam option (`--runner DataflowRunner --project ...`,
`--direct_running_mode multi_processing --direct_num_workers 2`, ...) passes through.

With `multi_processing`, Beam starts each worker as `python -m ...sdk_worker_main` writing to our
stderr: its start-up chatter and, when a DoFn fails, the worker's traceback would print above
the command's one-line `Error:` (issue 19). Below -vv those workers write to a log file instead
(named in an INFO line); the error itself still reaches this process and becomes the one line.
A worker process that dies mid-run (SIGKILL, OOM) fails the run: pipeline/worker_deaths.py.

`--runner dask` (or Beam's full DaskRunner path) runs on a Dask cluster: pipeline/runners.py.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import tempfile
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, SetupOptions, StandardOptions

log = logging.getLogger("textok.beam")

LOCAL_RUNNERS = {None, "", "direct", "directrunner", "fnapirunner", "local"}


def is_local_runner(options: PipelineOptions | Sequence[str]) -> bool:
    """True when the workers are this machine's processes with its environment: no --runner, a
    direct/in-process one, or Dask with a local cluster started for the run (--dask-local-workers)."""
    from textok.pipeline.runners import LocalDaskOptions, is_dask

    if not isinstance(options, PipelineOptions):
        options = PipelineOptions(list(options))
    runner = options.view_as(StandardOptions).runner
    if is_dask(runner) and options.view_as(LocalDaskOptions).dask_local_workers:
        return True
    return (runner or "").lower() in LOCAL_RUNNERS


def make_pipeline(beam_args: Sequence[str] = (), **overrides) -> beam.Pipeline:
    from textok.pipeline.runners import is_dask, load_runner_options

    load_runner_options(beam_args)  # a runner's own options (--dask_client_address) must parse
    options = PipelineOptions(list(beam_args), **overrides)
    options.view_as(SetupOptions).save_main_session = False
    runner = options.view_as(StandardOptions).runner
    if is_dask(runner):
        from textok.pipeline.runners import dask_runner

        return beam.Pipeline(runner=dask_runner(), options=options)
    if is_local_runner(options):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)  # -vv shows the workers' own output
        if options.view_as(DirectOptions).direct_running_mode == "multi_processing":
            from textok.pipeline.worker_deaths import watch_subprocess_workers

            watch_subprocess_workers()  # a worker killed mid-run fails the run (Beam alone waits forever)
            if quiet:
                return beam.Pipeline(runner=quiet_worker_runner(), options=options)
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    from textok.pipeline.runners import qualified_runner

    options.view_as(StandardOptions).runner = qualified_runner(runner)
    return beam.Pipeline(options=options)


def quiet_worker_runner():
    """An FnApiRunner whose multi_processing workers send their stderr to a log file."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    fd, worker_log = tempfile.mkstemp(prefix="textok-beam-workers-", suffix=".log")
    os.close(fd)
    # Beam's own command for these workers (fn_runner.py), run through a shell, so it can redirect.
    command = f"{shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main 2>>{shlex.quote(worker_log)}"
    log.info("multi_processing: Beam worker output goes to %s (-vv shows it here)", worker_log)

    class QuietWorkersRunner(FnApiRunner):
        # FnApiRunner.run_pipeline assigns its hard-coded worker command to `_default_environment`
        # in multi_processing mode; this property keeps ours.
        @property
        def _default_environment(self):
            return SubprocessSDKEnvironment.from_command_string(command_string=command)

        @_default_environment.setter
        def _default_environment(self, value) -> None:
            pass

    return QuietWorkersRunner()


def beam_leftovers(args: Sequence[str]) -> list[str]:
    """The tokens of `args` that Beam's own option parser (every PipelineOptions subclass, the one
    `PipelineOptions.get_all_options` builds) does not consume: options Beam would only warn
    about and drop. A bad value for a Beam option raises argparse.ArgumentError."""
    if not args:
        return []
    from textok.pipeline.runners import load_runner_options

    load_runner_options(args)  # learn the options of the runner named in args (ValueError if it cannot load)
    leftovers: list[str] = []

    def parse_with_beams_parser(parser) -> None:
        parser.exit_on_error = False  # a bad value raises ArgumentError instead of exiting the process
        leftovers.extend(parser.parse_known_args(list(args))[1])

    PipelineOptions(list(args)).get_all_options(add_extra_args_fn=parse_with_beams_parser,
                                                retain_unknown_options=True)
    return leftovers
