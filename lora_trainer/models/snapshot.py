"""Snapshot of a live model, so training (or sampling) leaves it exactly as it found it.

The one snapshot/restore mechanism of every adapter: the WebUI keeps using the same model object
after training (weights, devices, dtypes, `requires_grad`, train/eval mode and hooks must all come
back), and a standalone adapter restores its flags the same way. `ModelSnapshot.take()` records them;
`restore()` puts back what can be put back (flags, modes, devices, and a parameter object the host's own
forward swapped for a copy - Forge's RMSNorm replaces an fp8 `scale` by a compute-dtype one on its first
forward - gets the original back; hooks added by others during the run are left alone but reported) and
`differences()` says what still differs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _version(t: torch.Tensor) -> int | None:
    """The in-place version counter; None for an inference tensor (Forge loads every weight under
    `torch.inference_mode()`, and such tensors have no counter - nor can anything modify them outside it)."""
    return None if t.is_inference() else t._version


def _inference_ctx(t: torch.Tensor) -> Any:
    """An inference tensor's flags and data can be set back only inside inference mode."""
    import contextlib

    import torch

    return torch.inference_mode() if t.is_inference() else contextlib.nullcontext()


def _hook_ids(module: torch.nn.Module) -> tuple:
    return (tuple(module._forward_hooks), tuple(module._forward_pre_hooks),
            tuple(module._backward_hooks), "forward" in module.__dict__)


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes, bytes). Slow on big
    models (it copies to the CPU); tests and `--lora-trainer-verify` use it."""
    import torch

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class ModelSnapshot:
    """What a model looked like before training (cheap to take: no tensor copies)."""

    params: dict[str, tuple] = field(default_factory=dict)   # name -> (device, dtype, requires_grad, ptr, version)
    buffers: dict[str, tuple] = field(default_factory=dict)  # name -> (device, dtype, ptr, version)
    modes: dict[str, bool] = field(default_factory=dict)     # module name -> training
    hooks: dict[str, tuple] = field(default_factory=dict)    # module name -> hook ids
    full_hash: str | None = None
    _modules: dict[str, Any] = field(default_factory=dict, repr=False)
    _objects: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> the Parameter itself (a reference)

    @classmethod
    def take(cls, model: torch.nn.Module, *, with_hash: bool = False) -> ModelSnapshot:
        snap = cls()
        for name, mod in model.named_modules(remove_duplicate=False):
            snap.modes[name] = mod.training
            snap.hooks[name] = _hook_ids(mod)
            snap._modules[name] = mod
        for name, p in model.named_parameters(remove_duplicate=False):
            snap.params[name] = (p.device, p.dtype, p.requires_grad, p.data_ptr(), _version(p))
            snap._objects[name] = p
        for name, b in model.named_buffers(remove_duplicate=False):
            snap.buffers[name] = (b.device, b.dtype, b.data_ptr(), _version(b))
        if with_hash:
            snap.full_hash = state_dict_hash(model)
        return snap

    def restore_modes(self, model: torch.nn.Module) -> None:
        """Put back the train/eval flag of every module (nothing else)."""
        mods = dict(model.named_modules(remove_duplicate=False))
        for name, training in self.modes.items():
            mod = mods.get(name)
            if mod is not None and mod.training != training:
                mod.training = training

    def _put_back_replaced(self, model: torch.nn.Module) -> None:
        """A parameter the model's own code replaced by another object during the run (a lazy cast such
        as Forge's RMSNorm `self.scale = Parameter(self.scale.to(x.dtype))`) gets its original back: the
        original was never written to, so the host sees the very tensor it had, as if nothing had run."""
        current = dict(model.named_parameters(remove_duplicate=False))
        for name, original in self._objects.items():
            if name in current and current[name] is not original:
                owner, _, leaf = name.rpartition(".")
                module = model.get_submodule(owner) if owner else model
                if leaf in module._parameters:
                    module._parameters[leaf] = original

    def restore(self, model: torch.nn.Module) -> None:
        """Put back replaced parameter objects, requires_grad flags, train/eval modes and devices/dtypes
        of every parameter."""
        import torch

        with torch.no_grad():
            self.restore_modes(model)
            self._put_back_replaced(model)
            for name, p in model.named_parameters(remove_duplicate=False):
                want = self.params.get(name)
                if want is None:
                    continue
                device, dtype, req = want[0], want[1], want[2]
                with _inference_ctx(p):
                    if p.device != device or p.dtype != dtype:
                        p.data = p.data.to(device=device, dtype=dtype)
                    if p.requires_grad != req:
                        p.requires_grad_(req)
            for name, b in model.named_buffers(remove_duplicate=False):
                want = self.buffers.get(name)
                if want is not None and (b.device != want[0] or b.dtype != want[1]):
                    with _inference_ctx(b):
                        b.data = b.data.to(device=want[0], dtype=want[1])

    def differences(self, model: torch.nn.Module, *, check_hash: bool | None = None) -> list[str]:
        """Human-readable list of what differs from the snapshot (empty = identical)."""
        out: list[str] = []
        params = dict(model.named_parameters(remove_duplicate=False))
        if set(params) != set(self.params):
            extra = sorted(set(params) - set(self.params))[:5]
            gone = sorted(set(self.params) - set(params))[:5]
            out.append(f"parameter names changed (new {extra}, missing {gone})")
        for name, p in params.items():
            want = self.params.get(name)
            if want is None:
                continue
            if (p.device, p.dtype, p.requires_grad) != want[:3]:
                out.append(f"{name}: {p.device}/{p.dtype}/grad={p.requires_grad} != {want[0]}/{want[1]}/grad={want[2]}")
            elif name in self._objects and p is not self._objects[name]:
                out.append(f"{name}: replaced by another tensor")
            elif p.data_ptr() == want[3] and _version(p) != want[4]:
                out.append(f"{name}: modified in place")
        mods = dict(model.named_modules(remove_duplicate=False))
        for name, ids in self.hooks.items():
            mod = mods.get(name)
            if mod is None:
                out.append(f"module {name} is gone")
            elif _hook_ids(mod) != ids:
                out.append(f"{name}: hooks or forward override changed")
            elif mod.training != self.modes[name]:
                out.append(f"{name}: training mode changed")
        want_hash = self.full_hash is not None if check_hash is None else check_hash
        if want_hash and self.full_hash is not None and state_dict_hash(model) != self.full_hash:
            out.append("state-dict hash changed")
        return out


@contextlib.contextmanager
def eval_mode(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Eval mode for sampling (no LoRA dropout), then every module's train/eval flag as it was."""
    mods = list(modules)
    snaps = [ModelSnapshot.take(m) for m in mods]
    try:
        for m in mods:
            m.eval()
        yield
    finally:
        for m, snap in zip(mods, snaps, strict=True):
            snap.restore_modes(m)
