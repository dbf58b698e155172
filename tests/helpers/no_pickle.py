"""Prove that code reads no pickle: every unpickling entry point raises while the block runs."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator

import pytest
import torch


class UnpicklingCalled(AssertionError):
    pass


def _refuse(name: str):
    def refuse(*args, **kwargs):
        raise UnpicklingCalled(f"{name} was called")

    return refuse


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """`with no_unpickling(): ...` — pickle.load/loads/Unpickler and torch.load (both names) raise."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pickle, "load", _refuse("pickle.load"))
        mp.setattr(pickle, "loads", _refuse("pickle.loads"))
        mp.setattr(pickle, "Unpickler", _refuse("pickle.Unpickler"))
        mp.setattr(torch, "load", _refuse("torch.load"))
        mp.setattr(torch.serialization, "load", _refuse("torch.serialization.load"))
        yield
