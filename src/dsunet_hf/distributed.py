"""The process state shared by prediction and training under ``accelerate launch`` or ``torchrun``.

accelerate joins the processes of a launch into one group on its own only when they have an accelerator
(CUDA, XPU, ...); on a CPU-only machine it does so only when told ``cpu=True`` (``accelerate launch --cpu``
sets that), so under ``torchrun`` every process would think it is alone and do all the work (two processes:
every file predicted twice, every checkpoint written twice). ``use_cpu`` says when to tell it.
"""

from __future__ import annotations

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
