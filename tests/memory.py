"""Peak bytes of the tensors a block of code allocates, on CPU (no ``torch.cuda`` stats there).

A ``TorchDispatchMode`` sees every ATen op run inside the block. An op output whose storage is
new (not one of the op's inputs' storages: views and in-place ops share them) counts as
allocated until the last Python tensor object on that storage is gone (PyTorch keeps a
tensor's Python object alive while C++ still holds the tensor, so a weakref finalizer on it
fires when the storage can be freed). Tensors made before the block (weights, inputs) and
the scratch space inside a single kernel are not counted: this is the memory the code under
test holds, which is what a cache budget promises.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorBytes(TorchDispatchMode):
    """``with PeakTensorBytes() as m: ...``; then ``m.peak`` (bytes) and ``m.current``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, live tensors]
        self.current = 0
        self.peak = 0

    def _gone(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if not nbytes:
                continue
            if key in self.live:
                self.live[key][1] += 1
            elif key in inputs:
                continue  # a view or in-place result of memory made before the block
            else:
                self.live[key] = [nbytes, 1]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._gone, key)
        return out
