"""Does a model read its inputs? Per task, the validation loss of each target after its own input and after
another example's input (the same task's next example). A model that has only learned a task's typical
answer (its label prior, its target language) scores both alike; the difference is what reading buys.

    .venv/bin/python bench/input_reliance.py runs/default [--tasks sentiment topics] [--limit 200]

MODEL is anything `flanpipe eval` takes: a run folder, a `save_pretrained` folder, a checkpoint, a hub name.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--tasks", nargs="*", help="task names (default: every available task)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=200, help="examples per task (default 200)")
    parser.add_argument("settings", nargs="*", default=[], help="key=value settings, as for flanpipe")
    args = parser.parse_intermixed_args()

    from accelerate import Accelerator

    from pipeline.config import load_config
    from pipeline.data.batcher import Batcher
    from pipeline.evaluate.command import load_for_evaluation
    from pipeline.evaluate.evaluator import Evaluator
    from pipeline.forward import Seq2SeqLogits
    from pipeline.tasks.task import load_tasks

    cfg = load_config(None, args.settings)
    tasks = load_tasks(cfg.data.templates_path())
    names = args.tasks or [name for name, task in tasks.items() if task.available(cfg.data.cache_path())[0]]
    model, tokenizer, description = load_for_evaluation(args.model, cfg)
    evaluator = Evaluator(tasks, names, Batcher(tokenizer, cfg.data, model.config.decoder_start_token_id), cfg.eval,
                          cfg.data, seed=cfg.run.seed, split=args.split, limit=args.limit)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    wrapped = accelerator.prepare(Seq2SeqLogits(model))
    own = evaluator.validation_losses(accelerator, wrapped)
    other = evaluator.validation_losses(accelerator, wrapped, other_inputs=True)
    print(f"{description} · {args.split} · up to {args.limit} examples per task · loss in nats per target token")
    print(f"{'task':22s} {'n':>5s} {'own input':>10s} {'other input':>12s} {'difference':>11s}")
    for name in names:
        print(f"{name:22s} {len(evaluator.rows[name]):5d} {own[name]:10.3f} {other[name]:12.3f} "
              f"{other[name] - own[name]:11.3f}")


if __name__ == "__main__":
    main()
