"""A Beam multi_processing worker that dies (SIGKILL, OOM kill) fails the run instead of hanging it.

    from textok.pipeline.worker_deaths import watch_subprocess_workers
    watch_subprocess_workers()   # make_pipeline calls it for --direct_running_mode multi_processing

Why: the FnApiRunner learns that a bundle finished from the worker's answer on the control
channel (`ControlFuture.get()`, no timeout). A bundle whose stage sends elements back to the
runner also watches the data channel, which breaks when the worker dies; a stage that sends
nothing back (the caption graph's last step, `ParDo(CaptionChunkFn)`, commits its parts itself)
waits on the control answer alone. Beam's subprocess worker handler (worker_handlers.py,
`SubprocessSdkWorkerHandler`) never fails that answer when its process exits: only a thread
raises "Worker subprocess exited with return code 137" and the run waits forever. Beam's Docker
handler does what this module adds (`watch_container` aborts the control futures).

`watch_subprocess_workers` registers, for Beam's subprocess environment, a handler whose worker
thread fails every pending and later control request of that worker with `WorkerDiedError` when
the process exits while the runner still needs it. The run then stops with one `Error:` line
(Beam's stream-reader threads, broken by the same death, log their RpcError at DEBUG instead of
printing tracebacks); what the workers committed stays, and a rerun of the same command does the rest.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("textok.beam")

_registered = False
_register_lock = threading.Lock()


class WorkerDiedError(RuntimeError):
    """A Beam worker process exited in the middle of a run."""


def _death_message(worker_id: str, cause: str) -> str:
    detail = cause
    code = cause.rsplit(" ", 1)[-1]
    if code.lstrip("-").isdigit():  # Beam's "Worker subprocess exited with return code N"
        n = int(code)
        # the worker runs through a shell (beam_utils.quiet_worker_runner): a signal reads as 128 + N
        sig = -n if n < 0 else n - 128 if 128 < n < 160 else 0
        if sig:
            try:
                detail = f"exit status {n}: killed by {signal.Signals(sig).name}"
            except ValueError:
                detail = f"exit status {n}"
        else:
            detail = f"exit status {n}"
    return (f"Beam worker process {worker_id} died mid-run ({detail}; out of memory or killed?); "
            "what it committed is kept: rerun the same command to finish, with fewer "
            "--direct_num_workers or a smaller --batch-size if memory ran out")


class _ControlOfMortalWorker:
    """A worker's control connection that, once the worker died, fails requests at once."""

    def __init__(self, conn):
        self._conn = conn
        self.death: WorkerDiedError | None = None

    def push(self, request):
        future = self._conn.push(request)
        if future is not None and self.death is not None:
            future.abort(self.death)
        return future

    def fail_pending(self, death: WorkerDiedError) -> None:
        self.death = death  # first: a request pushed from now on fails in push()
        # Beam's ControlConnection.abort iterates its dict while other threads may push to it
        for future in list(self._conn._futures_by_id.values()):  # noqa: SLF001 (Beam keeps no public list)
            future.abort(death)

    def __getattr__(self, name):  # get_req, close, set_input, ...: the connection itself
        return getattr(self._conn, name)


# Beam's threads that read a worker's gRPC streams; a dead worker breaks them with an RpcError
_STREAM_READERS = ("read_grpc_client_inputs", "beam_control_read")


def _stream_readers_log_their_rpc_errors() -> None:
    """A worker's death also ends Beam's reader threads with a grpc.RpcError, which Python prints
    as tracebacks above the one `Error:` line: send those to the log at DEBUG (shown with -vv)."""
    import grpc

    printing = threading.excepthook

    def hook(args) -> None:
        if (args.thread is not None and args.thread.name in _STREAM_READERS
                and isinstance(args.exc_value, grpc.RpcError)):
            log.debug("Beam thread %s ended: the worker's stream broke", args.thread.name,
                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
            return
        printing(args)

    threading.excepthook = hook


def watch_subprocess_workers() -> None:
    """Register the watching handler for Beam's subprocess workers (once per process)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        from apache_beam.runners.portability import local_job_service
        from apache_beam.runners.portability.fn_api_runner.worker_handlers import (SubprocessSdkWorkerHandler,
                                                                                   WorkerHandler)
        from apache_beam.portability import python_urns

        class WatchedSubprocessWorkerHandler(SubprocessSdkWorkerHandler):
            """Beam's handler, plus: the worker process exiting before close() fails its requests."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.control_conn = _ControlOfMortalWorker(self.control_conn)
                self._closing = False

            def start_worker(self) -> None:
                self.worker = local_job_service.SubprocessSdkWorker(
                    self._worker_command_line, self.control_address, self.provision_info, self.worker_id)
                self.worker_thread = threading.Thread(name="run_worker", target=self._run_worker, daemon=True)
                self.worker_thread.start()

            def _run_worker(self) -> None:
                try:
                    self.worker.run()  # returns when the process exits; raises on a non-zero status
                    cause = "exit status 0"
                except Exception as e:  # noqa: BLE001 (reported below, not left to print as a thread's traceback)
                    cause = str(e)
                if self._closing:  # the runner asked it to stop: its exit is the normal end
                    return
                death = WorkerDiedError(_death_message(self.worker_id, cause))
                log.debug("%s", death)
                self.control_conn.fail_pending(death)

            def close(self) -> None:
                self._closing = True
                super().close()

        WorkerHandler.register_environment(python_urns.SUBPROCESS_SDK, bytes)(WatchedSubprocessWorkerHandler)
        _stream_readers_log_their_rpc_errors()
        _registered = True
