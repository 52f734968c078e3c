"""Published model shapes with random weights, for benchmarks that may not download anything: the configs of
google/flan-t5-small and google/flan-t5-base (their config.json on the hub; T5 v1.1 layout: gated-GELU
feed-forward, untied LM head, vocabulary 32,128)."""

from __future__ import annotations

import torch
from transformers import T5Config, T5ForConditionalGeneration

T5_V1_1 = {"vocab_size": 32128, "d_kv": 64, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
           "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
           "layer_norm_epsilon": 1e-6, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
SHAPES = {
    "flan-t5-small": {"d_model": 512, "d_ff": 1024, "num_layers": 8, "num_decoder_layers": 8, "num_heads": 6},
    "flan-t5-base": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12},
}


def random_model(shape: str, seed: int = 0) -> T5ForConditionalGeneration:
    """A model of the published shape `shape` with weights drawn from `seed` (T5's own initialisation)."""
    torch.manual_seed(seed)
    config = T5Config(**T5_V1_1, **SHAPES[shape])
    config.name_or_path = f"{shape}-shaped (random weights)"
    model = T5ForConditionalGeneration(config)
    # transformers 5 builds T5 with the head tied to the embedding whatever the config says (a hub checkpoint's
    # own head replaces it on loading); T5 v1.1's is a matrix of its own, initialised as T5 initialises it.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * config.initializer_factor)
    return model


def training_flops(model: torch.nn.Module, lengths: list[tuple[int, int]]) -> float:
    """Model FLOPs of a training step on examples of `lengths` (input, target) real tokens; forward and
    backward are 3 forwards, a forward 2 FLOPs per multiply-add:

        6 × Σ_examples [ N_enc·l_in + N_dec·l_out
                         + 2·d_att·(L_enc·l_in² + L_dec·(l_out² + l_out·l_in)) ]

    N_enc: the encoder's weight matrices plus the decoder's cross-attention key/value projections (they read
    encoder tokens); N_dec: the decoder's other matrices plus the LM head (d_model × vocabulary). The second
    line is the attention scores and weighted values (2 products) of each example over its own tokens
    (d_att = heads × d_kv; L_* layers; the causal decoder counted in full, as PaLM's MFU does). Embedding
    lookups, relative-position biases, norms and the softmax are left out. Padding, and the masked blocks of a
    packed row, are computed but are not model FLOPs."""
    config = model.config
    encoder = decoder = 0
    for name, parameter in model.named_parameters():
        if parameter.ndim < 2 or "embed" in name or name.startswith(("shared", "lm_head")) \
                or "relative_attention_bias" in name:
            continue  # lookups; the LM head is counted below, tied or not
        if name.startswith("encoder.") or ".EncDecAttention.k." in name or ".EncDecAttention.v." in name:
            encoder += parameter.numel()
        else:
            decoder += parameter.numel()
    decoder += model.get_output_embeddings().weight.numel()
    attention = config.num_heads * config.d_kv
    layers_in, layers_out = config.num_layers, config.num_decoder_layers
    return 6.0 * sum(encoder * n_in + decoder * n_out
                     + 2 * attention * (layers_in * n_in**2 + layers_out * (n_out**2 + n_out * n_in))
                     for n_in, n_out in lengths)


def matmul_peak(threads: int, device: str = "cpu", precision: str = "fp32") -> float:
    """This machine's matrix-product FLOP/s: the fastest of 5 products of two square matrices (2 n³ FLOPs
    each; n = 2048 in fp32 on `threads` CPU threads, 8192 on a GPU) after one to warm up."""
    import time

    torch.set_num_threads(threads)
    size = 8192 if device == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
