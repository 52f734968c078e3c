"""Held-out benchmarks from packaged data: MMLU and BIG-bench as evaluation-only task folders.

`flanpipe benchmarks fetch` (`make benchmarks`) fetches two pinned PyPI releases into `<cache>/downloads/`
with `pipeline.builtin.acquire` (downloaded, never installed) and writes one task folder per benchmark task
under `<cache>/benchmarks/` (`benchmark_tasks_dir`):
- `mmlu`: the 1,188 unique four-choice MMLU questions shipped in openai `evals==3.0.1.post1`
  (`evals/registry/data/sandbagging/samples-all*.jsonl` repeat 12 questions), scored by rank classification
  over the letters A/B/C/D and by the generated letter;
- `bigbench_<task>`: BIG-bench JSON tasks from the `bigbench==1.0.0` sdist (358 MB, read in one streaming pass
  that keeps only the task.json members needed): the BIG-Bench-Hard source tasks it ships as JSON
  (`BBH_SOURCES`), 2- and 3-digit arithmetic and word_unscrambling. Each is scored by its own preferred
  metric: `multiple_choice_grade` becomes rank classification over the example's `target_scores` keys (plus
  generated-answer accuracy), `exact_str_match` becomes exact match.

A task folder holds `task.yaml` (`held_out: true`), `standard.jinja` (the benchmark's own prompt: one template,
so scores stay comparable with published ones, whereas the evaluator rotates over a task's templates),
`test.jsonl` (the evaluated examples, at most `MAX_TEST_EXAMPLES` per BIG-bench task, a fixed hash-ordered
sample), `train.jsonl` (a small pool of few-shot exemplars, disjoint from test: never trained on) and the
`EVALUATION_ONLY` marker file that `check_trainable` refuses to train on. The splits are fixed files, not
carved, so that `data.split_seed` cannot change what the test set is.

    flanpipe eval MODEL --split test data.templates_dir=~/.cache/flanpipe/benchmarks
    flanpipe eval MODEL --split test --variant few_shot data.few_shot_k=5 data.max_input_length=1024 \\
        --tasks mmlu data.templates_dir=~/.cache/flanpipe/benchmarks          # MMLU 5-shot

Fetching is idempotent (present task folders are kept unless `force`, which rewrites them from the
downloaded archives) and atomic (each folder is written beside the benchmarks folder, then renamed in).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.builtin.acquire import PipArchive
from pipeline.errors import UserError
from pipeline.files import stable_seed, staged_folder

EVALS_WHEEL = PipArchive("evals", "3.0.1.post1", wheel=True)
BIGBENCH_SDIST = PipArchive("bigbench", "1.0.0")
# pip >= 26.3 refuses to download the bigbench sdist: its metadata declares a direct URL dependency (bleurt,
# a zip inside the sdist). pip 26.2 fetches it; it runs from its own wheel, not installed (`_pip_from`).
PINNED_PIP = PipArchive("pip", "26.2", wheel=True)

MMLU_MEMBERS = (
    "evals/registry/data/sandbagging/samples-all.jsonl",  # 200 questions with their subject ("topic")
    "evals/registry/data/sandbagging/samples-all-large.jsonl",  # 1,000 more, no subject; 12 repeat the above
)
MMLU_LETTERS = ("A", "B", "C", "D")
_MMLU_QUESTION = re.compile(r"\A(?P<stem>.*?)\s*\nA\. (?P<A>.*?)\nB\. (?P<B>.*?)\nC\. (?P<C>.*?)\nD\. (?P<D>.*?)"
                            r"\nAnswer:\s*\Z", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")

BIGBENCH_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
# 20 of the 23 BIG-Bench-Hard tasks come from these BIG-bench JSON tasks (logical_deduction and
# tracking_shuffled_objects in their three sizes, as BBH has them). The other three are programmatic in the
# sdist (a task.py, no examples to read): boolean_expressions, multistep_arithmetic(_two), web_of_lies.
BBH_SOURCES = (
    "causal_judgment", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies_syllogisms_negation", "geometric_shapes", "hyperbaton",
    "logical_deduction/three_objects", "logical_deduction/five_objects", "logical_deduction/seven_objects",
    "movie_recommendation", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects/three_objects",
    "tracking_shuffled_objects/five_objects", "tracking_shuffled_objects/seven_objects", "word_sorting",
)
# arithmetic has 20 subtasks (1-5 digits x 4 operations); 2 and 3 digits span easy to hard for small models.
BIGBENCH_EXTRA = (
    *(f"arithmetic/{digits}_digit_{op}" for digits in (2, 3)
      for op in ("addition", "subtraction", "multiplication", "division")),
    "word_unscrambling",
)
BIGBENCH_TASKS = {"bigbench_" + path.replace("/", "_"): path for path in (*BBH_SOURCES, *BIGBENCH_EXTRA)}

MMLU_EXEMPLARS = 25  # the few-shot pool (train split); 5-shot draws 5 of them per question
BIGBENCH_EXEMPLARS = 10
MAX_TEST_EXAMPLES = 1000  # BIG-bench tasks above this (hyperbaton has 50,000) keep a fixed sample of this many
EVALUATION_ONLY_MARKER = "EVALUATION_ONLY"
TEMPLATE_NAME = "standard"
MANIFEST = "manifest.json"
CHOICES_EXPRESSION = '{{ choices | join(" ||| ") }}'

MMLU_TEMPLATE = """\
{{ question }}
A. {{ A }}
B. {{ B }}
C. {{ C }}
D. {{ D }}
Answer:
|||
{{ answer }}
"""
BIGBENCH_TEMPLATE = """\
{{ input }}
|||
{{ target }}
"""


@dataclass
class Benchmark:
    """One benchmark task, converted and ready to be written as a task folder."""

    name: str
    description: str
    license: str
    origin: str
    """package==version and the archive member the examples came from."""
    template: str
    exemplars: list[dict[str, Any]]
    """The few-shot pool: the task's train split. Disjoint from `test`; never trained on."""
    test: list[dict[str, Any]]
    metrics: tuple[str, ...]
    answer_choices: list[str] | str | None = None
    normalize: str = "lower"
    bbh_source: bool = False


@dataclass
class BenchmarkResult:
    """What `fetch_benchmarks` did for one benchmark task."""

    name: str
    available: bool
    test: int = 0
    """Examples in the test split."""
    exemplars: int = 0
    """Examples in the few-shot pool (train split)."""
    path: Path | None = None
    """The task folder, when available."""
    error: str | None = None
    """One line: why the task is unavailable."""


def benchmark_tasks_dir(cache_dir: Path) -> Path:
    """The folder of benchmark task folders: `load_tasks(benchmark_tasks_dir(cache))`."""
    return Path(cache_dir).expanduser() / "benchmarks"


# --- the guard --------------------------------------------------------------------------------------------


def _folder(task: Any) -> Path:
    """A task's folder: a `Task` (anything with `.folder`) or the folder itself."""
    return Path(getattr(task, "folder", task))


def is_evaluation_only(task: Any) -> bool:
    """Whether a task (a `Task` or its folder) is an evaluation-only benchmark: its folder holds the marker."""
    return (_folder(task) / EVALUATION_ONLY_MARKER).exists()


def check_trainable(task: Any) -> None:
    """Raise `UserError` when `task` (a `Task` or its folder) is an evaluation-only benchmark."""
    if is_evaluation_only(task):
        marker = _folder(task) / EVALUATION_ONLY_MARKER
        raise UserError(f"task {_folder(task).name!r} is an evaluation-only benchmark; it cannot be trained on "
                        f"({marker})")


def refuse_training_on_benchmarks(tasks: Iterable[Any]) -> None:
    """`check_trainable` for many tasks at once; the error names every benchmark among them."""
    refused = [_folder(task).name for task in tasks if is_evaluation_only(task)]
    if refused:
        raise UserError(f"evaluation-only benchmark(s) {', '.join(refused)} cannot be trained on; "
                        "remove them from the mixture (evaluate them with `flanpipe eval`)")


# --- conversion (pure) ------------------------------------------------------------------------------------


def mmlu_questions(jsonl_texts: Sequence[str]) -> list[dict[str, str]]:
    """Parse the sandbagging samples (`{"question": "stem\\nA. ..\\nD. ..\\nAnswer:", "answer": "C"}`) into
    rows {question, A, B, C, D, answer, subject}, each question once (the first occurrence, whose subject
    is known when it comes from samples-all.jsonl; otherwise the subject is "")."""
    rows: dict[str, dict[str, str]] = {}
    for text in jsonl_texts:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            sample = json.loads(line)
            match = _MMLU_QUESTION.match(sample["question"])
            if match is None or sample.get("answer") not in MMLU_LETTERS:
                raise ValueError(f"line {number}: not a four-choice question ending in 'Answer:' with answer A-D")
            key = " ".join(sample["question"].split())
            subject = sample.get("topic", "")
            if key in rows:
                rows[key]["subject"] = rows[key]["subject"] or subject
                continue
            parts = {letter: match.group(letter).strip() for letter in MMLU_LETTERS}
            rows[key] = {"question": match.group("stem").strip(), **parts, "answer": sample["answer"],
                         "subject": subject}
    return list(rows.values())


def mmlu_benchmark(jsonl_texts: Sequence[str], exemplars: int = MMLU_EXEMPLARS) -> Benchmark:
    questions = mmlu_questions(jsonl_texts)
    pool, test = split_exemplars(questions, key=lambda row: row["question"], count=exemplars, salt="mmlu")
    return Benchmark(
        name="mmlu",
        description=f"MMLU: {len(questions)} unique four-choice questions over 57 subjects; answer with the letter",
        license="MIT (MMLU, Hendrycks et al. 2021; shipped in openai evals, MIT)",
        origin=f"{EVALS_WHEEL}: " + ", ".join(MMLU_MEMBERS),
        template=MMLU_TEMPLATE,
        exemplars=pool,
        test=test,
        metrics=("rank_classification", "accuracy"),
        answer_choices=list(MMLU_LETTERS),
    )


def bigbench_benchmark(name: str, task: dict[str, Any], origin: str = "", exemplars: int = BIGBENCH_EXEMPLARS,
                       max_test: int | None = MAX_TEST_EXAMPLES, bbh_source: bool = False) -> Benchmark:
    """Convert one BIG-bench JSON task (`{"examples": [{"input", "target" | "target_scores"}], ...}`).

    The prompt is BIG-bench's own: task_prefix + example_input_prefix + input (+ the choices, for multiple
    choice unless `append_choices_to_input` is false) + example_output_prefix. Multiple choice: `choices` are
    the `target_scores` keys in a seeded order, the target is the best-scored one, and the other choices
    scored as high (geometric_shapes' circle/ellipse, "3"/"three") are dropped, since rank classification
    scores one gold choice. Exact match: the target is the first of the targets written in digits, or the
    first (all are kept in `targets`), and numeric tasks compare numbers (`normalize: number`).
    """
    preferred = task.get("preferred_score")
    if preferred not in ("multiple_choice_grade", "exact_str_match"):
        raise ValueError(f"{name}: preferred_score {preferred!r} is neither multiple_choice_grade nor exact_str_match")
    multiple_choice = preferred == "multiple_choice_grade"
    rows, seen = [], set()
    for index, example in enumerate(task.get("examples", [])):
        identity = json.dumps(example, sort_keys=True)
        if identity in seen:  # BIG-bench drops exact duplicates too
            continue
        seen.add(identity)
        row = {"source_index": index, "question": example["input"]}
        if multiple_choice:
            row["choices"], row["target"] = _ranked_choices(example, random.Random(stable_seed(name, index)))
        else:
            targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
            row["targets"] = [str(target).strip() for target in targets]
            row["target"] = next((t for t in row["targets"] if _is_number(t)), row["targets"][0])
        row["input"] = _bigbench_prompt(task, example["input"], row.get("choices", []) if multiple_choice else [])
        rows.append(row)
    if not rows:
        raise ValueError(f"{name}: no examples")
    pool, test = split_exemplars(rows, key=lambda row: row["question"], count=exemplars, salt=name,
                                 max_test=max_test)
    numeric = not multiple_choice and all(_is_number(row["target"]) for row in rows)
    description = " ".join(str(task.get("description", "")).split())
    title = f"BIG-bench {name.removeprefix('bigbench_')}"
    return Benchmark(
        name=name,
        description=f"{title}: {description}" if description else title,
        license="Apache-2.0 (BIG-bench)",
        origin=origin,
        template=BIGBENCH_TEMPLATE,
        exemplars=pool,
        test=test,
        metrics=("rank_classification", "accuracy") if multiple_choice else ("exact_match",),
        answer_choices=CHOICES_EXPRESSION if multiple_choice else None,
        normalize="number" if numeric else "lower",
        bbh_source=bbh_source,
    )


def _ranked_choices(example: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    scores = example.get("target_scores")
    if not scores:
        raise ValueError(f"multiple-choice example without target_scores: {example['input'][:60]!r}")
    stripped: dict[str, float] = {}
    for choice, score in scores.items():
        stripped.setdefault(str(choice).strip(), score)  # templates strip choices; keep the first of equals
    best = max(stripped.values())
    target = next(choice for choice, score in stripped.items() if score == best)
    choices = sorted(choice for choice, score in stripped.items() if score < best or choice == target)
    if any("|||" in choice for choice in choices):
        raise ValueError(f"a choice contains '|||': {choices}")
    rng.shuffle(choices)  # the order the prompt lists them in; BIG-bench also permutes its sorted choices
    return choices, target


def _bigbench_prompt(task: dict[str, Any], text: str, choices: Sequence[str]) -> str:
    """The input as BIG-bench's `default_format_fn` builds it (bigbench/api/json_task.py), stripped."""
    if choices and task.get("append_choices_to_input", True):
        choice_prefix = task.get("choice_prefix", "\n  choice: ")
        text = text + choice_prefix + choice_prefix.join(choices)
    prompt = (str(task.get("task_prefix", "")) + task.get("example_input_prefix", "\nQ: ") + text
              + task.get("example_output_prefix", "\nA: "))
    return prompt.strip()


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip().replace(",", "")) is not None


def split_exemplars(rows: list[dict], key: Callable[[dict], str], count: int, salt: str,
                    max_test: int | None = None) -> tuple[list[dict], list[dict]]:
    """Split rows into (few-shot pool, test), both in their original order, deterministically.

    Rows sharing a key (the same question or paragraph) stay on one side, so no test question is also an
    exemplar. The pool takes whole groups in hash order until it holds `count` rows; `max_test` keeps that
    many test rows, again by hash (a fixed, uniform sample).
    """
    groups = sorted({key(row) for row in rows}, key=lambda k: stable_seed(salt, "exemplars", k))
    chosen, size = set(), 0
    counts: dict[str, int] = {}
    for row in rows:
        counts[key(row)] = counts.get(key(row), 0) + 1
    for group in groups:
        if size >= count:
            break
        chosen.add(group)
        size += counts[group]
    pool = [row for row in rows if key(row) in chosen]
    if len(pool) == len(rows):
        raise ValueError(f"{salt}: {len(rows)} examples leave none for the test split after {count} exemplars")
    test = [(index, row) for index, row in enumerate(rows) if key(row) not in chosen]
    if max_test is not None and len(test) > max_test:
        kept = sorted(test, key=lambda pair: stable_seed(salt, "test", json.dumps(pair[1], sort_keys=True)))
        test = sorted(kept[:max_test], key=lambda pair: pair[0])
    return pool, [row for _, row in test]


# --- writing ----------------------------------------------------------------------------------------------


def task_yaml_text(benchmark: Benchmark, package: str) -> str:
    spec: dict[str, Any] = {
        "description": benchmark.description,
        "license": benchmark.license,
        "source": {"files": {"train": "train.jsonl", "test": "test.jsonl"}},
        "splits": {"train": "train", "test": "test"},
        "carve": {},
        "metrics": list(benchmark.metrics),
        "normalize": benchmark.normalize,
        "held_out": True,
    }
    if benchmark.answer_choices is not None:
        spec["answer_choices"] = benchmark.answer_choices
    header = (
        f"# Evaluation-only benchmark, written by `flanpipe benchmarks fetch` from {package}; do not edit.\n"
        f"# test.jsonl: {len(benchmark.test)} evaluated examples. train.jsonl: {len(benchmark.exemplars)} few-shot "
        "exemplars, disjoint from test.\n"
        "# The EVALUATION_ONLY file makes the trainer refuse this task.\n"
        f"# Preview: flanpipe render {benchmark.name} --split test -n 3 data.templates_dir=<the folder above this one>\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=None)


def write_benchmark(root: Path, benchmark: Benchmark, package: str = "") -> Path:
    """Write `root/<name>/` (task.yaml, standard.jinja, train.jsonl, test.jsonl, EVALUATION_ONLY) atomically.

    The folder is staged one level below `root`, where `load_tasks(root)` never sees it half written, then
    renamed in.
    """
    target = root / benchmark.name
    with staged_folder(target) as staging:
        for file_name, rows in (("train.jsonl", benchmark.exemplars), ("test.jsonl", benchmark.test)):
            with open(staging / file_name, "w", encoding="utf-8") as file:
                file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (staging / f"{TEMPLATE_NAME}.jinja").write_text(benchmark.template, encoding="utf-8")
        (staging / EVALUATION_ONLY_MARKER).write_text(
            f"{benchmark.name} is a held-out benchmark ({benchmark.origin}): evaluate it, never train on it.\n",
            encoding="utf-8",
        )
        (staging / "task.yaml").write_text(task_yaml_text(benchmark, package), encoding="utf-8")
    return target
