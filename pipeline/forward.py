"""The one forward path: logits for padded, packed and answer-choice batches, token losses, and generation.

    model = Seq2SeqLogits(model)                 # before accelerator.prepare (see "Distributed" below)
    logits = model(batch)                        # a batch from pipeline.data (padded or packed) or a choice batch
    per_token = token_losses(logits, batch["labels"])
    sums, counts = example_loss_sums(per_token, batch)   # per example, in the order of the collated features

Training loss, validation loss, rank classification and generation (`generate`) all call the prepared (wrapped)
model with a batch. Nothing else runs the model.

**Packed batches** (`pipeline.data.collate.PackingCollator`): `seq2seq_forward` builds three boolean masks from
the segment ids inside the forward (nothing quadratic is stored in the batch) with transformers' own mask
factories, so the result is a bool mask for sdpa and an additive float mask for eager attention (flex attention
is refused: with torch 2.13 on CPU, T5 under flex fails even on plain padded batches):
  encoder self-attention   same segment                       (block diagonal)
  decoder self-attention   same segment and key <= query      (causal within a segment)
  cross-attention          decoder segment == encoder segment (padding queries see everything,
                                                               so no softmax row is empty: no NaN)
T5's relative position bias depends only on the distance key - query, and segments are contiguous, so every
in-segment distance, and hence every bias, equals the unpacked one: packed logits and losses match the
unpacked ones to float rounding (tests/test_forward.py checks this, and that no example leaks into another).
`T5ForConditionalGeneration.forward` feeds one `attention_mask` to both encoder self-attention and
cross-attention, so the packed forward runs the encoder first and then calls the model with `encoder_outputs`
and the cross-attention mask as `attention_mask` (the model's own head, including T5's `d_model**-0.5`
rescaling for tied embeddings, stays in charge).

**Choice batches** (`pipeline.evaluate.scoring`): each input once, one decoder row per answer choice; the
encoder runs once per input.

Distributed: under DDP/FSDP all of a forward must run inside the wrapped module's forward (DDP arms gradient
sync there, FSDP gathers the shared embedding there). `Seq2SeqLogits` is that module: wrap the model before
`accelerator.prepare`, and reach the transformers model with `inner_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from transformers import GenerationConfig, PreTrainedModel
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    and_masks,
    causal_mask_function,
    packed_sequence_mask_function,
)
from transformers.modeling_outputs import BaseModelOutput

from pipeline.data.collate import LABEL_PAD
from pipeline.errors import UserError


def segment_attention_masks(config: Any, encoder_segment_ids: torch.Tensor, decoder_segment_ids: torch.Tensor,
                            dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """(encoder self, decoder self, cross) attention masks of a packed batch, in the form the model's
    attention implementation takes (bool for sdpa, additive float for eager)."""
    implementation = config._attn_implementation
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"packed batches are tested with the sdpa and eager attention implementations, not "
                         f"{implementation!r}; load the model with attn_implementation='sdpa' (or 'eager')")
    make_mask = ALL_MASK_ATTENTION_FUNCTIONS[implementation]
    rows, input_width = encoder_segment_ids.shape
    target_width = decoder_segment_ids.shape[1]

    def same_segment_or_padding_query(batch_idx, head_idx, q_idx, kv_idx):
        query_segment = decoder_segment_ids[batch_idx, q_idx]
        return (query_segment == encoder_segment_ids[batch_idx, kv_idx]) | (query_segment == 0)

    def build(q_length: int, kv_length: int, mask_function: Any) -> Any:
        return make_mask(batch_size=rows, q_length=q_length, kv_length=kv_length, mask_function=mask_function,
                         allow_is_causal_skip=False, allow_is_bidirectional_skip=False, dtype=dtype,
                         config=config, device=encoder_segment_ids.device)

    return (build(input_width, input_width, packed_sequence_mask_function(encoder_segment_ids)),
            build(target_width, target_width,
                  and_masks(causal_mask_function, packed_sequence_mask_function(decoder_segment_ids))),
            build(target_width, input_width, same_segment_or_padding_query))


def seq2seq_forward(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Logits (rows, target length, vocab) of a padded, a packed or a choice batch. Call it through
    `Seq2SeqLogits` (a bare model is wrapped by `as_forward`) so that a DDP/FSDP wrapper sees the forward."""
    if "choice_owner" in batch:
        return _shared_encoder_forward(model, batch)
    if "encoder_segment_ids" not in batch:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits
    encoder_mask, decoder_mask, cross_mask = segment_attention_masks(
        model.config, batch["encoder_segment_ids"], batch["decoder_segment_ids"],
        model.get_input_embeddings().weight.dtype)
    encoder_outputs = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=encoder_mask)
    # With `encoder_outputs` given, the model uses `attention_mask` only for cross-attention.
    return model(encoder_outputs=encoder_outputs, attention_mask=cross_mask,
                 decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=decoder_mask,
                 use_cache=False).logits


def _shared_encoder_forward(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """A choice batch: `input_ids`/`attention_mask` hold each input once, `decoder_input_ids` one row per
    (input, choice) pair and `choice_owner` the input of each pair. The encoder runs once per input and its
    output is repeated for that input's choices: k choices cost one encoder pass and k decoder rows."""
    owner = batch["choice_owner"]
    hidden = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden.last_hidden_state[owner]),
                 attention_mask=batch["attention_mask"][owner], decoder_input_ids=batch["decoder_input_ids"],
                 use_cache=False).logits


class Seq2SeqLogits(nn.Module):
    """`forward(batch) -> logits` for padded, packed and choice batches, so that DDP, FSDP and DeepSpeed wrap
    every model call; a batch with a `generate` entry returns generated ids instead (see `generate`). Wrap the
    model before `accelerator.prepare`; `inner_model` reaches the transformers model for saving."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # FSDP's transformer auto-wrap policy reads this from the module it is given.
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "generate" in batch:
            return _generate_plainly(self.model, batch)
        return seq2seq_forward(self.model, batch)

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """accelerate's FSDP2 preparation re-ties shared weights through this method of the module it is given
        (after moving to `meta` and loading): without it T5's embedding and `lm_head` come apart, two parameters
        and one of them outside the optimizer. (No `get_input_embeddings` here on purpose: accelerate would put
        `shared` in its own FSDP group while the encoder's and decoder's `embed_tokens`, the same parameter, stay
        in the root group, which torch refuses.)"""
        self.model.tie_weights(*args, **kwargs)


def _generate_plainly(model: PreTrainedModel, batch: Mapping[str, Any]) -> torch.Tensor:
    """`model.generate` with exactly the settings asked for (greedy or beams, a length): a checkpoint's own
    generation config (BART's `forced_bos_token_id` and `no_repeat_ngram_size`, say) would otherwise fill in
    every setting left unset. The decoder starts as in training, from `config.decoder_start_token_id`."""
    config = model.config
    tokens = {"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
              "pad_token_id": config.pad_token_id}
    settings = dict(batch["generate"])
    synced = settings.pop("synced_gpus", False)
    inherited, model.generation_config = model.generation_config, GenerationConfig(**tokens)
    try:
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              generation_config=GenerationConfig(**tokens, do_sample=False, **settings),
                              synced_gpus=synced)
    finally:
        model.generation_config = inherited


# Architectures whose positions are relative to each token (T5's bias on key - query distance): packed rows give
# every example the logits it has alone. Others (BART's learned absolute positions) number a packed row's tokens
# as one sequence, so their packed losses differ (up to 0.36 nats per example measured on BART).
PACKABLE_MODEL_TYPES = ("t5", "mt5")


def check_packing(config: Any, packing: bool) -> None:
    """Refuse `data.packing=true` for a model whose packed forward would differ from the unpacked one."""
    if packing and config.model_type not in PACKABLE_MODEL_TYPES:
        raise UserError(
            f"data.packing=true: {config.model_type} models number positions over the whole packed row, so packed "
            f"examples would be scored differently from unpacked ones; packing is verified for "
            f"{', '.join(PACKABLE_MODEL_TYPES)} models only. Set data.packing=false"
        )


def as_forward(model: nn.Module) -> nn.Module:
    """The module to call with a batch: a prepared (wrapped) `Seq2SeqLogits` as it is, a bare model wrapped."""
    return Seq2SeqLogits(model) if isinstance(model, PreTrainedModel) else model


def model_weight_name(name: str) -> str:
    """A prepared model's weight name as the transformers model inside names it: the wrappers' prefixes (DDP's
    `module.`, torch.compile's `_orig_mod.`) and `Seq2SeqLogits`' `model.` removed."""
    while name.startswith(("module.", "_orig_mod.")):
        name = name.removeprefix("module.").removeprefix("_orig_mod.")
    return name.removeprefix("model.")


def inner_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a prepared model (DDP/FSDP/compile wrappers and `Seq2SeqLogits` peeled)."""
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    return model.model if isinstance(model, Seq2SeqLogits) else model


def is_sharded(model: nn.Module) -> bool:
    """Whether the model's weights are split over processes (FSDP v1 or v2, DeepSpeed ZeRO-3): every process
    must then join every model call."""
    if type(model).__name__ == "DeepSpeedEngine":
        return getattr(model, "zero_optimization_stage", lambda: 0)() == 3
    return any(isinstance(module, FSDPModule | FullyShardedDataParallel) for module in model.modules())


def generate(model: nn.Module, encoded: Mapping[str, torch.Tensor], *, max_new_tokens: int, num_beams: int = 1
             ) -> torch.Tensor:
    """Greedy (or beam) output ids for a padded input batch (`input_ids`, `attention_mask`): the one place
    flanpipe generates. The call goes through the prepared model's forward, so FSDP gathers its shards as in
    training; when the weights are sharded every process keeps stepping until all have finished
    (`synced_gpus`), so call it the same number of times on every process."""
    synced = is_sharded(model) and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    settings = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "synced_gpus": synced}
    return as_forward(model)({**encoded, "generate": settings})


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every label position (0 where the label is -100), computed in float32."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=LABEL_PAD,
                           reduction="none").view(labels.shape)


def example_loss_sums(per_token: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token loss and label-token count of each example, in the order of the collated features
    (`per_token` from `token_losses`; packed batches map positions to examples by `target_example_ids`)."""
    labels = batch["labels"]
    example_ids = batch.get("target_example_ids")
    if example_ids is None:
        example_ids = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    real = labels != LABEL_PAD
    ids, losses = example_ids[real], per_token[real]
    count = len(batch["task"]) if "task" in batch else (int(ids.max()) + 1 if ids.numel() else 0)
    sums = losses.new_zeros(count).index_add_(0, ids, losses)
    counts = losses.new_zeros(count).index_add_(0, ids, torch.ones_like(losses))
    return sums, counts
