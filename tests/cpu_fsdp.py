"""Run `flanpipe` with accelerate's FSDP path on CPU (gloo): a test-only launcher shim.

    torchrun --standalone --nproc_per_node 2 -m cpu_fsdp train ...        (with tests/ on PYTHONPATH and the
                                                                           ACCELERATE_USE_FSDP / FSDP_* variables
                                                                           `accelerate launch --use_fsdp` sets)

accelerate 1.16 switches `AcceleratorState.distributed_type` to FSDP only for GPU-type devices (state.py, the
branch over MULTI_GPU/MULTI_NPU/...); on CPU an FSDP request stays MULTI_CPU and the model is wrapped in DDP.
torch's FSDP itself runs on CPU with gloo. The shim overrides three things. First, after `AcceleratorState` is
built, a MULTI_CPU state that was given an FSDP plugin becomes `DistributedType.FSDP` with that plugin, which is
what the GPU branch does (it also hands the plugin the mixed-precision setting; these runs are fp32, "no").
Everything after that is accelerate's and torch's own GPU code path, run with device `cpu`: `prepare` (FSDP1
wrapping or FSDP2 `fully_shard`), gradient clipping, sharded `save_state`/`load_state`, `get_state_dict`.
flanpipe's product code is not touched; without this shim the same request is refused
(`pipeline.train.runtime.check_sharding`).

Second, for FSDP v1: accelerate passes `device_id=accelerator.device`, which the
FSDP state makes `<type>:<local rank>` (cuda:1 on a GPU, so `cpu:1` here), and torch's FSDP1 compares it with its
CPU compute device `cpu` (CPU devices carry no index) and refuses. The shim passes `torch.device("cpu")` instead:
the same device, without the index.

Third, accelerate asks FSDP1 for full state dicts with `offload_to_cpu=True` (checkpoints, the final model): on a GPU
that copies every gathered tensor into CPU memory; on a CPU, torch 2.13's FSDP1 goes wrong. The model state dict
crashes (SIGSEGV in its post-state-dict hook, reproduced with a bare T5 and no accelerate: offload_to_cpu=True
crashes, False works), and the optimizer state dict comes back wrong without a word (a run resumed from it
diverged from step 2 after the resume). The shim makes `offload_to_cpu` read False on both configs, so FSDP
clones the gathered tensors into memory they own, which is what the GPU copy gives; resume is then bitwise.
"""

from __future__ import annotations

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel

_original_init = AcceleratorState.__init__


def _init(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init

_original_fsdp1_init = FullyShardedDataParallel.__init__


def _fsdp1_init(self, module, *args, device_id=None, **kwargs):
    if device_id is not None and torch.device(device_id).type == "cpu":
        device_id = torch.device("cpu")
    _original_fsdp1_init(self, module, *args, device_id=device_id, **kwargs)


FullyShardedDataParallel.__init__ = _fsdp1_init

# accelerate sets `offload_to_cpu` at construction and again before each save, so the field itself is replaced.
FullStateDictConfig.offload_to_cpu = property(lambda self: False, lambda self, value: None)
FullOptimStateDictConfig.offload_to_cpu = property(lambda self: False, lambda self, value: None)


if __name__ == "__main__":
    from pipeline.cli import main

    main()
