"""Render a task's examples into (input, target) pairs, with FLAN's template variants, cached on disk.

Variants are generated from the same template files:
- zero-shot: the template as written;
- few-shot: k exemplars from the task's *train* split (never the example itself) rendered with the same
  template, each as "input\\ntarget", blank-line separated, before the query; dropped from the end until
  the prompt fits `max_input_length`;
- options: the answer choices listed in the prompt ("OPTIONS:\\n- a\\n- b"), where the template puts
  `{{ options }}` or else appended; without options, `{{ options }}` renders empty;
- input inversion: templates marked `inversion: true` (given the answer, produce the input).

`render_split` runs `datasets.map` over a split and writes one row per (example, forward template), so row
`index * num_templates + t` is example `index` under template `t`; a promptsource-style example that makes no
pair is kept as a row with empty input and target and its `dropped` reason, so the layout holds. Its cache key hashes everything that shaped
the rows (task.yaml and templates, the source data's fingerprint, split, variant, seed, k, length), so a
second run re-renders nothing and any change re-renders. Each cached rendering carries a manifest (sizes and
checksums); one that no longer verifies is reported and rendered again.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import UserError
from pipeline.files import content_hash, stable_seed, staged_folder, usable_cache
from pipeline.tasks.splits import MAX_BAD_ROW_FRACTION, load_splits
from pipeline.tasks.task import Task
from pipeline.tasks.templates import Dropped, SeededRandom, Template, render_answer_choices

if TYPE_CHECKING:
    import datasets

RENDER_FORMAT_VERSION = 2  # bump when the rendered rows change for the same inputs
EXEMPLAR_SEPARATOR = "\n\n"
ROW_FIELDS = ("task", "template", "index", "input", "target", "choices", "dropped")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Variant:
    """How a template is instantiated: zero- or few-shot, with or without the options listed."""

    few_shot: bool = False
    options: bool = False

    @property
    def name(self) -> str:
        return ("few_shot" if self.few_shot else "zero_shot") + ("_options" if self.options else "")

    @classmethod
    def parse(cls, name: str) -> Variant:
        for variant in VARIANTS:
            if variant.name == name:
                return variant
        raise UserError(f"unknown variant {name!r}; valid: {', '.join(v.name for v in VARIANTS)}")


VARIANTS = tuple(Variant(few_shot, options) for few_shot in (False, True) for options in (False, True))
ZERO_SHOT = VARIANTS[0]


def options_block(choices: Sequence[str]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {choice}" for choice in choices)


def approximate_length(text: str) -> int:
    """Token count estimate for pruning when no tokenizer is at hand (~1.3 subword tokens per word)."""
    return (len(text.split()) * 4 + 2) // 3


class ExemplarPool:
    """The train rows few-shot exemplars are drawn from, with each rendered exemplar memoised.

    `same_split` says the examples being rendered come from this very split, so an example is never its own
    exemplar. Rows should be plain dicts (row access on an Arrow dataset is ~100x slower).
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], same_split: bool = False):
        self.rows = rows
        self.same_split = same_split
        self._shots: dict[tuple[str, str, int, int], str] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def shot(self, task: Task, template: Template, index: int, seed: int) -> str:
        key = (task.name, template.name, index, seed)
        if key not in self._shots:
            rendered = render_example(task, template, self.rows[index], index=index, seed=seed)
            self._shots[key] = "" if rendered.dropped else f"{rendered.input}\n{rendered.target}"
        return self._shots[key]


@dataclass(frozen=True)
class RenderedExample:
    task: str
    template: str
    index: int
    input: str
    target: str
    choices: tuple[str, ...] = ()
    dropped: str = ""
    """Why a promptsource-style example makes no pair (input and target are then empty); "" when it does."""


def render_example(
    task: Task,
    template: Template,
    example: Mapping[str, Any],
    *,
    index: int,
    seed: int,
    variant: Variant = Variant(),
    exemplars: ExemplarPool | None = None,
    k: int = 3,
    max_input_length: int = 256,
    length_fn: Callable[[str], int] = approximate_length,
) -> RenderedExample:
    """Render one example under one template and variant. All randomness is seeded per example (one stream for
    the answer choices, then the template)."""
    rng_key = f"{seed}/{task.name}/{template.name}/{index}"
    rng = SeededRandom(rng_key)
    choices = template.render_choices(example, rng_key=rng_key, rng=rng)
    if choices is None and isinstance(task.answer_choices, str):
        choices = render_answer_choices(task.answer_choices, example, rng_key=rng_key, path=str(task.yaml_path),
                                        rng=rng)
    elif choices is None:
        choices = task.answer_choices
    promptsource = template.style == "promptsource"
    options = ""
    if variant.options and choices and not (promptsource and template.lists_choices):
        listed = list(choices)
        if task.shuffle_options:
            random.Random(rng_key + "/options").shuffle(listed)
        options = options_block(listed)
    try:
        prompt, target = template.render(example, rng_key=rng_key, options=options, rng=rng,
                                         answer_choices=choices if promptsource else list(choices or []))
    except Dropped as dropped:
        return RenderedExample(task.name, template.name, index, "", "", tuple(choices or ()), str(dropped))
    choices = list(choices or [])
    if options and not template.places_options:
        prompt = f"{prompt}{EXEMPLAR_SEPARATOR}{options}"
    elif not options and template.places_options:
        prompt = _BLANK_LINES.sub("\n\n", prompt)  # the empty `{{ options }}` leaves a gap
    # promptsource renders a target outside the choices (imdb's negation template); it is not scored by rank.
    if choices and not template.inversion and not promptsource and target not in choices:
        raise UserError(
            f"{template.path}: example {index} of task {task.name!r}: target {target!r} is not one of "
            f"answer_choices {choices}; fix the template's target or the choices"
        )
    if variant.few_shot and exemplars:
        prompt = _few_shot_prompt(task, template, prompt, index, seed, exemplars, k, max_input_length, length_fn)
    return RenderedExample(task.name, template.name, index, prompt, target, tuple(choices))


def _few_shot_prompt(
    task: Task,
    template: Template,
    prompt: str,
    index: int,
    seed: int,
    exemplars: ExemplarPool,
    k: int,
    max_input_length: int,
    length_fn: Callable[[str], int],
) -> str:
    rng = random.Random(f"{seed}/{task.name}/{template.name}/{index}/exemplars")
    candidates = rng.sample(range(len(exemplars)), min(len(exemplars), k + 1))
    chosen = [i for i in candidates if not (exemplars.same_split and i == index)][:k]
    shots = [shot for i in chosen if (shot := exemplars.shot(task, template, i, seed))]  # "": a dropped example
    while shots and length_fn(EXEMPLAR_SEPARATOR.join([*shots, prompt])) > max_input_length:
        shots.pop()
    return EXEMPLAR_SEPARATOR.join([*shots, prompt])


def render_split(
    task: Task,
    split: str,
    *,
    cache_dir: Path,
    seed: int = 0,
    variant: Variant = Variant(),
    templates: Sequence[str] | None = None,
    k: int = 3,
    max_input_length: int = 256,
    split_seed: int = 0,
    max_bad_fraction: float = MAX_BAD_ROW_FRACTION,
    num_proc: int = 1,
    limit: int | None = None,
) -> datasets.Dataset:
    """Rendered rows (task, template, index, input, target, choices) for a split, from the cache if present.

    Rows are ordered example-major: every forward template (or the named `templates`) for example 0, then 1...
    """
    import datasets

    splits = load_splits(task, cache_dir, split_seed, max_bad_fraction)
    if split not in splits:
        raise UserError(f"task {task.name!r} has no {split!r} split; add it to splits or carve in {task.yaml_path}")
    examples = splits[split]
    positions = list(range(len(examples)))
    if limit is not None and limit < len(examples):
        # A seeded sample, not the first rows: sources are often ordered (by topic, by book), and the
        # first N of an ordered split would be a single class.
        rng = np.random.default_rng(stable_seed(split_seed, task.name, split, "sample"))
        positions = sorted(rng.choice(len(examples), size=limit, replace=False).tolist())
        examples = examples.select(positions)
    chosen = [task.template(name) for name in templates] if templates else task.forward_templates
    key = _cache_key(task, examples, split, variant, seed, k, max_input_length, [t.name for t in chosen], limit)
    folder = cache_dir / "rendered" / task.name / f"{split}-{variant.name}-{key[:16]}"
    damaged = folder.exists() and not usable_cache(folder, f"rendering of {task.name}/{split}")
    if folder.exists() and not damaged:
        return datasets.load_from_disk(str(folder))

    pool = ExemplarPool(splits["train"].to_list(), same_split=split == "train") if variant.few_shot else None

    def render_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows: dict[str, list] = {name: [] for name in ROW_FIELDS}
        for offset, index in enumerate(indices):
            index = positions[index]  # the example's index in the whole split
            example = {column: values[offset] for column, values in batch.items()}
            for template in chosen:
                rendered = render_example(
                    task, template, example, index=index, seed=seed, variant=variant, exemplars=pool, k=k,
                    max_input_length=max_input_length,
                )
                for name in rows:
                    value = getattr(rendered, name)
                    rows[name].append(list(value) if name == "choices" else value)
        return rows

    features = datasets.Features(
        {
            "task": datasets.Value("string"),
            "template": datasets.Value("string"),
            "index": datasets.Value("int64"),
            "input": datasets.Value("string"),
            "target": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "dropped": datasets.Value("string"),
        }
    )
    with _progress_bars(len(examples) * len(chosen) >= 20_000):  # long renders show progress, short ones stay quiet
        rendered = examples.map(
            render_batch,
            batched=True,
            with_indices=True,
            remove_columns=examples.column_names,
            features=features,
            num_proc=num_proc if num_proc > 1 else None,
            load_from_cache_file=False,  # our own key decides; datasets' function hashing would miss template edits
            new_fingerprint=key[:40],  # datasets appends a shard suffix with num_proc; 64 characters at most
            desc=f"render {task.name}/{split}/{variant.name}",
        )
        with staged_folder(folder, keep_existing=not damaged, manifest=True) as staging:
            rendered.save_to_disk(str(staging))
    return datasets.load_from_disk(str(folder))


@contextlib.contextmanager
def _progress_bars(show: bool):
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _cache_key(task: Task, examples: datasets.Dataset, split: str, variant: Variant, seed: int, k: int,
               max_input_length: int, template_names: list[str], limit: int | None) -> str:
    parts = {
        "version": RENDER_FORMAT_VERSION,
        "task": task.fingerprint,
        "data": examples._fingerprint,  # datasets hashes the source files and every transform applied
        "split": split,
        "variant": variant.name,
        "seed": seed,
        "k": k if variant.few_shot else None,
        "max_input_length": max_input_length if variant.few_shot else None,
        "templates": template_names,
        "limit": limit,
    }
    return content_hash(parts, length=64)


def sample_texts(tasks: Mapping[str, Task], cache_dir: Path, *, per_task: int = 1000, seed: int = 0,
                 split_seed: int = 0) -> list[str]:
    """Rendered training text of every available task (up to `per_task` examples each, evenly spaced, under
    every template, with options): what the embedded default's tokenizer is trained on, so that both the
    data and the instructions' own words are in its vocabulary. Deterministic."""
    texts = []
    for task in tasks.values():
        if not task.available(cache_dir)[0]:
            continue
        train = load_splits(task, cache_dir, split_seed)["train"]
        step = max(1, len(train) // per_task)
        for index in range(0, len(train), step)[:per_task]:
            example = train[index]
            for template in task.templates.values():
                rendered = render_example(task, template, example, index=index, seed=seed, variant=Variant(options=True))
                texts.append(f"{rendered.input}\n{rendered.target}")
    return texts


def texts_fingerprint(tasks: Mapping[str, Task], cache_dir: Path, split_seed: int = 0) -> str:
    """Changes whenever `sample_texts` could: a task file, a template or the data of an available task."""
    parts = []
    for task in tasks.values():
        if task.available(cache_dir)[0]:
            parts.append([task.name, task.fingerprint, load_splits(task, cache_dir, split_seed)["train"]._fingerprint])
    return content_hash(RENDER_FORMAT_VERSION, parts, length=64)
