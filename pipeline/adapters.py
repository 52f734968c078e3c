"""Parameter-efficient fine-tuning through `peft`: adapters added to a model, saved, loaded and merged.

    model = add_adapters(model, cfg.peft)           # the same transformers model, adapters injected, base frozen
    merged = save_adapter_and_merged(weights, cfg.peft, load_base, adapter_dir)
    model = apply_adapter_folder(base, folder)      # a `save_pretrained` adapter folder on its base

The model keeps its class and its forward: peft injects LoRA/IA3 layers in place and we keep calling the
transformers model (`pipeline.forward` is the one forward path, padded, packed and choice batches alike). Only
the adapter parameters require gradients, so the optimizer holds only them and a checkpoint saves only them
(`trainable_weights`). At the end of a run the adapters are written as peft writes them
(`PeftModel.save_pretrained`, loadable with `PeftModel.from_pretrained` on the base) and merged into a plain model
(`merge_and_unload`) that `AutoModelForSeq2SeqLM.from_pretrained` loads. peft is imported only when a run uses it
(~2.5 s).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from pipeline.config import PeftConfig
from pipeline.errors import UserError, one_line
from pipeline.forward import model_weight_name

ADAPTER_CONFIG = "adapter_config.json"


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 asks transformers 5 `is_gradient_checkpointing`, which warns that it is deprecated: not the user's
    to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def peft_settings(settings: PeftConfig) -> Any:
    """The peft config object for `settings` (a seq2seq task: peft's own seq2seq handling)."""
    from peft import IA3Config, LoraConfig, TaskType

    targets = list(settings.target_modules) or None
    if settings.method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=settings.rank, lora_alpha=settings.alpha,
                          lora_dropout=settings.dropout, target_modules=targets or "all-linear")
    if settings.method == "ia3":
        # peft treats a target as feed-forward (scaled on its input) only when told; its defaults say which.
        feedforward = [name for name in targets if name.startswith(("wi", "wo", "fc"))] if targets else None
        return IA3Config(task_type=TaskType.SEQ_2_SEQ_LM, target_modules=targets, feedforward_modules=feedforward)
    raise ValueError(f"no adapters for peft.method={settings.method!r}")


def add_adapters(model: PreTrainedModel, settings: PeftConfig) -> PreTrainedModel:
    """`model` with `settings.method`'s adapters injected (in place) and every other weight frozen; `model` as it
    is for `none`. A setting peft cannot apply to this model is a UserError naming it."""
    if settings.method == "none":
        return model
    from peft import get_peft_model

    try:
        with _quiet_peft():
            wrapped = get_peft_model(model, peft_settings(settings))
    except (ValueError, TypeError, KeyError) as error:
        hint = ("set peft.target_modules to names of the model's linear layers (for T5: q, k, v, o, wi, wo; "
                "T5 v1.1/FLAN-T5/mT5: wi_0, wi_1; BART: q_proj, v_proj, fc1, fc2)")
        raise UserError(f"peft.method={settings.method} on model {model.config.name_or_path!r} "
                        f"({model.config.model_type}): {one_line(error).rstrip('.')}; {hint}") from None
    return wrapped.get_base_model()


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameters (a shared matrix counted once), for the trackers and the start line."""
    parameters = list(model.parameters())
    return {"parameters": sum(p.numel() for p in parameters),
            "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad)}


def trainable_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of `module`'s state dict `weights` that are trainable parameters (what a checkpoint of an
    adapter run keeps: the base weights are the base model's, loaded from it)."""
    trainable = {name for name, parameter in module.named_parameters() if parameter.requires_grad}
    return {name: value for name, value in weights.items() if name in trainable}


def load_trainable_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load an adapter run's checkpoint (`model.safetensors`: the trainable weights alone) into the prepared model,
    by name whatever wrapped the model when it was saved and now (DDP's `module.`, torch.compile's `_orig_mod.`),
    so a checkpoint resumes on any number of processes. Every trainable weight must be there, and nothing else."""
    from safetensors.torch import load_file

    saved = {model_weight_name(name): value for name, value in load_file(str(checkpoint / "model.safetensors")).items()}
    trainable = {model_weight_name(name): parameter for name, parameter in model.named_parameters()
                 if parameter.requires_grad}
    if set(saved) != set(trainable):
        odd = sorted(set(saved) ^ set(trainable))
        raise UserError(f"{checkpoint}: its adapter weights do not fit this run's adapters (e.g. {odd[0]}); resume "
                        "with the peft settings it was trained with, or train.resume=off")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(saved[name])


def save_adapter_and_merged(weights: dict[str, torch.Tensor], settings: PeftConfig,
                            load_base: Callable[[], PreTrainedModel], adapter_dir: Path) -> PreTrainedModel:
    """Write the trained adapters (`weights`: the injected model's state dict, or its trainable part) to
    `adapter_dir` with peft's `save_pretrained`, and return the base merged with them (`merge_and_unload`) for the
    caller to save like any model. The adapters are put on a freshly loaded base, so the folder is right whatever
    wrapped the trained model (DDP, FSDP: `weights` is the gathered state dict)."""
    from peft import get_peft_model

    with _quiet_peft():
        peft_model = get_peft_model(load_base(), peft_settings(settings))
    injected = peft_model.get_base_model()
    adapters = trainable_weights(injected, injected.state_dict())
    missing = sorted(set(adapters) - set(weights))
    if missing:
        raise RuntimeError(f"the trained weights lack adapter weights such as {missing[:3]}")
    injected.load_state_dict({name: weights[name] for name in adapters}, strict=False)
    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    return peft_model.merge_and_unload()


def is_adapter_folder(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def adapter_base_name(folder: Path) -> str:
    """The base model an adapter folder was trained on (its config's `base_model_name_or_path`)."""
    from peft import PeftConfig as PeftFolderConfig

    try:
        name = PeftFolderConfig.from_pretrained(str(folder)).base_model_name_or_path
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"{folder}: cannot read its {ADAPTER_CONFIG} ({one_line(error)}); save the adapters again "
                        "with PeftModel.save_pretrained") from None
    if not name:
        raise UserError(f"{folder}/{ADAPTER_CONFIG}: no base_model_name_or_path; set it to the base model's hub "
                        "name or folder")
    return name


def apply_adapter_folder(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    """`model` (the folder's base) with the folder's adapters injected, unmerged: scored as the adapter itself.
    Its `name_or_path` becomes the folder, so scores cached by weights are keyed by the adapters."""
    from peft import PeftModel

    try:
        with _quiet_peft():
            injected = PeftModel.from_pretrained(model, str(folder)).get_base_model()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise UserError(f"{folder}: the adapters do not load on {model.config.name_or_path} "
                        f"({one_line(error)})") from None
    injected.config.name_or_path = str(folder)
    return injected
