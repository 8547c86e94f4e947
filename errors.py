"""Which exceptions are a user's mistake, and the one line that tells them so.

    raise FlagError("give --rows-per-shard or --shard-mb, not both")   # the CLI exits 2 (usage)
    user_error(exc)   # -> "file/key/flag: what is wrong; the fix" for a mistake, None for a bug

The library raises ordinary exceptions with messages that name the file, key or flag and the
fix (ValueError and its kin SchemaError, DeviceError; FileNotFoundError; the captioners'
ConfigErrors; ...). `textok.cli` turns those into one `Error: ...` line and an exit status;
anything else is a bug and keeps its traceback. Nothing here imports torch or Beam: types are
recognised by name where importing them would cost seconds on every command.
"""
from __future__ import annotations

import os
import pickle
from types import TracebackType


class FlagError(ValueError):
    """A flag value or combination that cannot work: a usage error (exit status 2)."""


# Errors whose message was written for the user (the class names keep torch, Beam and the
# backends unimported): the captioners' configuration errors and "every server is down", the
# text-encoder loader's (a non-finite embedding included), missing Google credentials, the Hugging
# Face Hub's answers to a wrong id or revision, or no network, and a stage whose inputs mostly
# ended in the dead letter (pipeline/run_outcome.py), a Beam worker process killed mid-run
# (pipeline/worker_deaths.py: the message says to rerun).
_MISTAKE_NAMES = {"GeminiConfigError", "LocalVLMConfigError", "OpenAICompatConfigError", "FleetDownError",
                  "NonFiniteEmbedding", "EncoderError", "DefaultCredentialsError",
                  "RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "LocalEntryNotFoundError",
                  "GatedRepoError", "OfflineModeIsEnabled", "HFValidationError", "TooManyDeadLetters",
                  "WorkerDiedError"}
# A file that is not what its name promises: a truncated or overwritten checkpoint.
_CORRUPT_FILE_NAMES = {"SafetensorError", "HeaderTooLarge"}
_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _file_being_read(tb: TracebackType | None) -> str | None:
    """The file the innermost safetensors / torch.load frame was reading (their errors do not say)."""
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if "safetensors" in code.co_filename or code.co_filename.endswith(os.path.join("torch", "serialization.py")):
            for name in ("filename", "f"):
                value = tb.tb_frame.f_locals.get(name)
                if isinstance(value, (str, os.PathLike)):
                    found = os.fspath(value)
                    break
        tb = tb.tb_next
    return found


def _is_checkpoint_error(exc: BaseException) -> bool:
    """A safetensors error, or torch.load failing on a file that is not a checkpoint
    ("PytorchStreamReader failed reading zip archive", an unpickling error, an empty file)."""
    if type(exc).__name__ in _CORRUPT_FILE_NAMES:
        return True
    return (isinstance(exc, (RuntimeError, pickle.UnpicklingError, EOFError))
            and _file_being_read(exc.__traceback__) is not None)


def _remote_error(message: str) -> tuple[str, str] | None:
    """(type name, message) of the error at the end of a traceback passed as text: how Beam's
    multi-process and remote runners report an exception raised in a worker."""
    if "Traceback (most recent call last)" not in message:
        return None
    for line in reversed(message.strip().splitlines()):
        head, sep, text = line.partition(": ")
        if sep and not line.startswith(" ") and head.replace(".", "").replace("_", "").isalnum():
            return head.rsplit(".", 1)[-1], text
    return None


# The same judgement by name, for an exception known only from its text.
_MISTAKE_TYPE_NAMES = _MISTAKE_NAMES | {"ValueError", "SchemaError", "DeviceError", "FlagError",
                                        *(t.__name__ for t in _FILE_ERRORS)}


def user_error(exc: BaseException) -> str | None:
    """One line for an exception that reports a user's mistake; None when it is a bug."""
    remote = _remote_error(str(exc)) if isinstance(exc, Exception) else None
    if remote is not None:
        return _one_line(remote[1]) if remote[0] in _MISTAKE_TYPE_NAMES else None
    if _is_checkpoint_error(exc):
        path = _file_being_read(exc.__traceback__) or "a checkpoint file"
        return (f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {_one_line(str(exc))}); the file is "
                "truncated or not what its name says: re-save it, or point the flag at another checkpoint")
    if isinstance(exc, KeyError):
        # A KeyError written as a sentence (a missing split, column, class) is a message; a bare
        # key is a lookup that went wrong in the code: a bug, keep the traceback.
        if len(exc.args) == 1 and isinstance(exc.args[0], str) and " " in exc.args[0]:
            return _one_line(exc.args[0])
        return None
    if isinstance(exc, _FILE_ERRORS):
        message = _one_line(str(exc))
        path = getattr(exc, "filename", None) or _file_being_read(exc.__traceback__)
        return message if not path or str(path) in message else f"{path}: {message}"
    if isinstance(exc, ValueError) or type(exc).__name__ in _MISTAKE_NAMES:
        return _one_line(str(exc) or type(exc).__name__)
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
