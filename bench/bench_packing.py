"""Padding efficiency and training throughput: encoder-decoder packing (`PackingCollator`) against dynamic
padding (`PaddingCollator`, with and without length grouping), on lengths drawn like instruction data.

    .venv/bin/python bench/bench_packing.py [--batches 200] [--timed-batches 6] [--row-lengths 256x128 ...]
        [--mixture default [--tokenizer DIR] | --lengths lengths.jsonl]

The synthetic mix: 50% zero-shot classification (input 20-80 tokens, target 1-3), 20% few-shot
classification (input 120-256, target 1-3), 30% generation (input 30-200, target 5-64), with the default
`max_input_length=256`, `max_target_length=64`. `--mixture NAME` draws the examples from a mixture with
the MixtureSampler (run.seed 0), renders them and tokenizes them with `encode_texts` (eos, truncation);
the tokenizer is `--tokenizer DIR` (a saved tokenizer), else a BPE of 8k tokens trained on the rendered text
as a stand-in. `--lengths` reads lengths instead, one JSON object per line with `input` and `target` counts.
Packing is measured for each `--row-lengths` shape (widest encoder x decoder side of a packed row; the first
is the default, `data.packed_input_length` x `data.packed_target_length`), each batch's rows planned by
`plan_rows`. Throughput is real (non-padding) tokens per second of forward+backward of a small T5 on this
machine, the ways interleaved batch by batch.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from pipeline.data.collate import (
    LABEL_PAD,
    PackingCollator,
    PaddingCollator,
    count_tokens,
    length_grouped_batches,
)
from pipeline.data.tokenize import TruncationStats, encode_texts
from pipeline.forward import Seq2SeqLogits, token_losses

VOCAB = 2000
MAX_INPUT, MAX_TARGET = 256, 64


def synthetic_lengths(n: int, rng: random.Random) -> list[tuple[int, int]]:
    lengths = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            lengths.append((rng.randint(20, 80), rng.randint(1, 3)))
        elif kind < 0.7:
            lengths.append((rng.randint(120, MAX_INPUT), rng.randint(1, 3)))
        else:
            lengths.append((rng.randint(30, 200), rng.randint(5, MAX_TARGET)))
    return lengths


def read_lengths(path: Path) -> list[tuple[int, int]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(min(int(r["input"]), MAX_INPUT), min(int(r["target"]), MAX_TARGET)) for r in rows]


def mixture_lengths(name: str, n: int, tokenizer_dir: Path | None) -> list[tuple[int, int]]:
    from tokenizers import pre_tokenizers, trainers

    from pipeline.config import load_config
    from pipeline.mixing.sampler import MixtureSampler
    from pipeline.mixing.tree import RegistryStats, load_mixture
    from pipeline.tasks.rendering import ExemplarPool, Variant, render_example
    from pipeline.tasks.splits import load_split
    from pipeline.tasks.task import load_tasks

    data = load_config().data
    tasks = load_tasks(data.templates_path())
    mixture = load_mixture(name, RegistryStats(tasks, data.cache_path(), data.split_seed), data.mixtures_path())
    rows, pools, pairs = {}, {}, []
    for draw in MixtureSampler(mixture, seed=0).next_batch(n).draws():
        task = tasks[draw.task]
        if draw.task not in rows:
            rows[draw.task] = load_split(task, "train", data.cache_path(), data.split_seed).to_list()
            pools[draw.task] = ExemplarPool(rows[draw.task], same_split=True)
        rendered = render_example(task, task.template(draw.template), rows[draw.task][draw.example],
                                  index=draw.example, seed=0, variant=Variant(draw.few_shot, draw.options),
                                  exemplars=pools[draw.task], k=data.few_shot_k,
                                  max_input_length=data.max_input_length)
        pairs.append((rendered.input, rendered.target))
    inputs, targets = zip(*pairs, strict=True)
    if tokenizer_dir:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    else:
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace()
        bpe.train_from_iterator([*inputs, *targets], trainers.BpeTrainer(
            vocab_size=8000, special_tokens=["<pad>", "</s>", "<unk>"]))
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>",
                                            unk_token="<unk>")
    input_ids, input_truncated = encode_texts(tokenizer, inputs, MAX_INPUT)
    labels, target_truncated = encode_texts(tokenizer, targets, MAX_TARGET)
    stats = TruncationStats.of({"input_truncated": input_truncated, "target_truncated": target_truncated})
    print(stats.message(f"mixture {name!r}"))
    return [(len(i), len(t)) for i, t in zip(input_ids, labels, strict=True)]


def make_features(lengths: list[tuple[int, int]], rng: random.Random) -> list[dict]:
    def ids(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n - 1)] + [1]  # ends with eos, like tokenize_batch

    return [{"input_ids": ids(i), "labels": ids(t), "task": "bench"} for i, t in lengths]


def padding_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def efficiency(batches: list[dict]) -> float:
    real, total = map(sum, zip(*(count_tokens(b) for b in batches), strict=True))
    return real / total


def step_seconds(model: torch.nn.Module, batch: dict) -> float:
    start = time.perf_counter()
    (token_losses(model(batch), batch["labels"]).sum() / (batch["labels"] != LABEL_PAD).sum()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def throughputs(model: torch.nn.Module, ways: list[list[dict]], rounds: int) -> list[float]:
    """Real tokens per second of forward+backward for each way, the ways interleaved batch by batch so that
    load from other processes hits them alike (the first batch of each round warms up and is not timed)."""
    seconds, tokens = [0.0] * len(ways), [0] * len(ways)
    for _ in range(rounds):
        for i, batches in enumerate(zip(*ways, strict=True)):
            for way, batch in enumerate(batches):
                elapsed = step_seconds(model, batch)
                if i:
                    seconds[way] += elapsed
                    tokens[way] += count_tokens(batch)[0]
    return [t / s for t, s in zip(tokens, seconds, strict=True)]


def row_lengths(text: str) -> tuple[int, int]:
    encoder, _, decoder = text.partition("x")
    return int(encoder), int(decoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches for padding efficiency")
    parser.add_argument("--timed-batches", type=int, default=6, help="batches for throughput (1 more warms up)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=min(torch.get_num_threads(), 2),
                        help="torch threads (1 gives steadier timings on a shared machine)")
    parser.add_argument("--mixture", help="draw, render and tokenize examples of this mixture")
    parser.add_argument("--tokenizer", type=Path, help="saved tokenizer folder for --mixture")
    parser.add_argument("--lengths", type=Path, help="JSONL of {input, target} token counts")
    parser.add_argument("--row-lengths", type=row_lengths, nargs="+", metavar="INxOUT",
                        default=[(256, 128), (256, 64), (512, 128)],
                        help="packed row shapes to compare (the first is flanpipe's default)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the timed batches")
    args = parser.parse_args()
    rng = random.Random(0)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    size = args.batch_size
    if args.mixture:
        lengths = mixture_lengths(args.mixture, args.batches * size, args.tokenizer)
    elif args.lengths:
        lengths = read_lengths(args.lengths)
    else:
        lengths = synthetic_lengths(args.batches * size, rng)
    features = make_features(lengths[: args.batches * size], rng)
    windows = [features[i:i + size] for i in range(0, len(features) - size + 1, size)]
    padding = PaddingCollator(padding_tokenizer())

    # Length grouping reorders a window of 4 micro-batches (e.g. gradient accumulation 4).
    grouped = []
    for start in range(0, len(windows) - 3, 4):
        window = [f for w in windows[start:start + 4] for f in w]
        order = length_grouped_batches([(len(f["input_ids"]), len(f["labels"])) for f in window], size)
        grouped += [padding([window[i] for i in group]) for group in order]
    padded = [padding(w) for w in windows]
    packed = {shape: [PackingCollator(*shape)(w) for w in windows] for shape in args.row_lengths}
    source = f"mixture {args.mixture!r}" if args.mixture else args.lengths or "synthetic instruction-like lengths"
    print(f"{len(windows)} batches of {size} examples ({source}); max lengths {MAX_INPUT}/{MAX_TARGET}")
    print("padding efficiency (real tokens / all tokens, encoder+decoder):")
    print(f"  dynamic padding               {efficiency(padded):6.1%}")
    print(f"  dynamic padding, grouped x4   {efficiency(grouped):6.1%}")
    for (encoder, decoder), batches in packed.items():
        rows = sum(b["input_ids"].shape[0] for b in batches) / len(batches)
        print(f"  packing, rows <= {encoder}x{decoder:<8} {efficiency(batches):6.1%}   "
              f"({rows:.1f} rows per batch of {size})")

    config = T5Config(vocab_size=VOCAB, d_model=128, d_ff=256, num_layers=4, num_decoder_layers=4, num_heads=4,
                      d_kv=32, feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1)
    model = Seq2SeqLogits(T5ForConditionalGeneration(config).train())
    timed = args.timed_batches + 1
    speeds = throughputs(model, [padded[:timed], *(batches[:timed] for batches in packed.values())], args.rounds)
    print(f"forward+backward, T5 d_model=128 4+4 layers, {torch.get_num_threads()} threads, {args.timed_batches} "
          f"batches x {args.rounds} rounds (real tokens/s):")
    print(f"  dynamic padding               {speeds[0]:9,.0f}")
    for (encoder, decoder), speed in zip(packed, speeds[1:], strict=True):
        print(f"  packing, rows <= {encoder}x{decoder:<8} {speed:9,.0f}   ratio to padding {speed / speeds[0]:.2f}x")


if __name__ == "__main__":
    main()
