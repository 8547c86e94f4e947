"""Pipeline options: the local default runs in-process and never downloads Prism.

Beam's DirectRunner first tries the Prism runner, which downloads a Go binary at run time.
We use the FnApiRunner (what DirectRunner falls back to) directly unless the user names a
runner; every other Beam option (`--runner DataflowRunner --project ...`,
`--direct_running_mode multi_processing --direct_num_workers 2`, ...) passes through.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

LOCAL_RUNNERS = {None, "", "direct", "directrunner", "fnapirunner", "local"}


def make_pipeline(beam_args: Sequence[str] = (), **overrides) -> beam.Pipeline:
    options = PipelineOptions(list(beam_args), **overrides)
    options.view_as(SetupOptions).save_main_session = False
    runner_name = options.view_as(StandardOptions).runner
    if (runner_name or "").lower() in LOCAL_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)
