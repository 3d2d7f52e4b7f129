"""The process state shared by prediction and training under ``accelerate launch`` or ``torchrun``.

accelerate joins the processes of a launch into one group on its own only when they have an accelerator
(CUDA, XPU, ...); on a CPU-only machine it does so only when told ``cpu=True`` (``accelerate launch --cpu``
sets that), so under ``torchrun`` every process would think it is alone and do all the work (two processes:
every file predicted twice, every checkpoint written twice). ``use_cpu`` says when to tell it.
"""

from __future__ import annotations

import contextlib

import torch


def accelerator_available() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def use_cpu(device: str | torch.device | None = None) -> bool:
    """Whether the processes run on CPU: asked for (``device="cpu"``) or no accelerator to run on."""
    return (device is not None and torch.device(device).type == "cpu") or not accelerator_available()


def process_state(device: str | torch.device | None = None):
    """accelerate's ``PartialState`` (a singleton: the first call decides), with its process group formed
    on CPU too, so that ``split_between_processes`` really splits."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(device))


class StopRequested(Exception):
    """Raised in a process whose share of the work is stopped because another process of the group failed."""


class ProcessFailures:
    """How the processes of a group learn that one of them failed, so that all of them end promptly together.

    A process that fails calls :meth:`fail`; the others see it at their next :meth:`check` (between batches), which
    raises :class:`StopRequested`, so that none waits in the final gather for a share that will not come (for the
    group's timeout, 30 minutes, when the failed process goes on: a script that catches the error) and none goes on
    with a long share after the run has failed. The flag is a key of the group's own key-value store (the one that
    formed the group), read without waiting; a group without one (MPI) finishes its shares before the failure is
    known. :meth:`raise_for` then raises the failure in every process: its own error in the process that failed, one
    naming that process and its error in the others."""

    _calls = 0  # every process creates one per run, in the same order: the same key everywhere

    def __init__(self, state, name: str = "predict"):
        ProcessFailures._calls += 1
        self.state, self.key, self.store = state, f"dsunet_hf/{name}/{ProcessFailures._calls}/failed", None
        if state.num_processes > 1:
            try:
                from torch.distributed.distributed_c10d import _get_default_store

                self.store = _get_default_store()
            except Exception:  # no store (MPI) or another torch: the others learn of the failure at the gather
                self.store = None

    def fail(self, error: BaseException) -> dict:
        """This process failed with ``error``: tell the others; returns what :meth:`raise_for` needs of it."""
        if self.store is not None:
            with contextlib.suppress(Exception):  # the flag only speeds up the end; the gather still reports it
                self.store.set(self.key, str(self.state.process_index))
        kind = next((k.__name__ for k in (OSError, ValueError, ImportError) if isinstance(error, k)), "RuntimeError")
        return {"process": self.state.process_index, "kind": kind, "message": f"{type(error).__name__}: {error}"}

    def check(self) -> None:
        """Raise :class:`StopRequested` if another process has failed."""
        if self.store is not None and self.store.check([self.key]):
            raise StopRequested

    def raise_for(self, failures: list[dict], own: BaseException | None, started: bool = True) -> None:
        """After the gather: ``own`` (this process's error) again, else the first other process's failure, as an error
        of its kind (OSError, ValueError, ImportError, else RuntimeError) that names it. ``started=False``: the
        failure came before any output was written (the main process listing the inputs)."""
        if own is not None:
            raise own
        if failures:
            first = failures[0]
            kind = {"OSError": OSError, "ValueError": ValueError, "ImportError": ImportError}.get(first["kind"], RuntimeError)
            then = ("the outputs finished are kept: a re-run resumes" if started else "before any output was written")
            raise kind(f"process {first['process']} of {self.state.num_processes} failed ({first['message']}); every "
                       f"process stopped, {then}")
