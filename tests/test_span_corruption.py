"""Span corruption (`pipeline.tasks.span_corruption`): seqio's noise mask, T5's sentinel format, hand-checked
examples, determinism, and the preprocessing step in a task folder."""

import random

import pytest
from conftest import write_task

from pipeline.errors import UserError
from pipeline.tasks.span_corruption import corrupt, corrupt_words, random_spans_noise_mask
from pipeline.tasks.splits import load_splits
from pipeline.tasks.task import load_task

TEXT = "the quick brown fox jumps over the lazy dog"


def spans(mask):
    """(is_noise, length) runs of a mask."""
    runs = []
    for value in mask:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return [tuple(run) for run in runs]


def test_hand_checked_corruption_of_a_given_mask():
    mask = [False, False, True, True, False, False, False, True, False]
    inputs, targets = corrupt_words(TEXT.split(), mask)
    assert inputs == "the quick <extra_id_0> jumps over the <extra_id_1> dog"
    assert targets == "<extra_id_0> brown fox <extra_id_1> lazy"


@pytest.mark.parametrize("seed", range(20))
def test_the_mask_has_t5s_density_and_span_count_and_alternates_from_non_noise(seed):
    mask = random_spans_noise_mask(100, 0.15, 3.0, random.Random(seed))
    runs = spans(mask)
    assert sum(mask) == 15  # round(100 × 0.15)
    assert sum(1 for noise, _ in runs if noise) == 5  # round(15 / 3)
    assert runs[0][0] is False and runs[-1][0] is True  # non-noise first, noise last (seqio's interleaving)
    assert all(length >= 1 for _, length in runs)


def test_span_lengths_average_the_mean_and_vary():
    lengths = [length for seed in range(300)
               for noise, length in spans(random_spans_noise_mask(200, 0.15, 3.0, random.Random(seed))) if noise]
    assert sum(lengths) / len(lengths) == pytest.approx(3.0, abs=1e-9)  # 30 noise words in 10 spans, always
    assert len(set(lengths)) > 5  # but the spans themselves vary in length


@pytest.mark.parametrize(("length", "expected"), [(0, []), (1, [False]), (2, [False, True]), (3, [False, False, True])])
def test_short_texts_follow_seqio(length, expected):
    assert random_spans_noise_mask(length, 0.15, 3.0, random.Random(0)) == expected


def test_rounding_is_half_to_even_as_in_tensorflow():
    # 10 × 0.25 = 2.5 noise units: TF's round gives 2; 2 / 1.0 = 2 spans
    assert sum(random_spans_noise_mask(10, 0.25, 1.0, random.Random(0))) == 2
    assert sum(random_spans_noise_mask(14, 0.25, 1.0, random.Random(0))) == 4  # 3.5 -> 4


@pytest.mark.parametrize("seed", range(10))
def test_inputs_and_targets_interleave_back_into_the_text(seed):
    rng = random.Random(seed)
    words = [rng.choice("alpha beta gamma delta epsilon zeta eta theta".split()) + str(i) for i in range(rng.randint(2, 80))]
    inputs, targets = corrupt(" ".join(words), seed)
    hidden = {}
    for chunk in targets.split("<extra_id_")[1:]:
        number, _, text = chunk.partition("> ")
        hidden[number] = text.strip()
    restored = []
    for word in inputs.split():
        restored += hidden[word[len("<extra_id_"):-1]].split() if word.startswith("<extra_id_") else [word]
    assert restored == words
    assert targets.startswith("<extra_id_0> ")


def test_deterministic_per_seed_and_text():
    assert corrupt(TEXT * 5, seed=3) == corrupt(TEXT * 5, seed=3)
    assert corrupt(TEXT * 5, seed=3) != corrupt(TEXT * 5, seed=4)
    assert corrupt(TEXT * 5, seed=3) != corrupt(TEXT * 5 + " again", seed=3)


def corpus_task(root, preprocess="[{span_corruption: {max_words: 20}}]"):
    rows = [{"text": " ".join(f"word{i}x{j}" for j in range(5 + i % 40))} for i in range(60)] + [{"text": "alone"}]
    return write_task(root, "corpus", f"source: {{files: data.jsonl}}\npreprocess: {preprocess}\n"
                      "carve: {validation: 5, test: 5}\n", {"denoise": "{{ inputs }}\n|||\n{{ targets }}\n"}, rows)


def test_the_preprocessing_step_splits_long_texts_and_is_deterministic(tmp_path):
    task = load_task(corpus_task(tmp_path))
    first = load_splits(task, tmp_path / "cache", split_seed=0)
    rows = [row for split in first.values() for row in split]
    assert set(first["train"].column_names) == {"inputs", "targets"}
    assert all(len(row["inputs"].split()) <= 20 for row in rows)  # at most max_words words (sentinels included)
    assert all(row["targets"].startswith("<extra_id_0>") for row in rows)
    # 60 texts of 5..44 words in equal pieces of at most 20 (one-word texts skipped)
    assert len(rows) == sum(-(-(5 + i % 40) // 20) for i in range(60))
    again = load_splits(load_task(corpus_task(tmp_path / "again")), tmp_path / "cache2", split_seed=0)
    assert [r["inputs"] for r in again["train"]] == [r["inputs"] for r in first["train"]]


@pytest.mark.parametrize(("preprocess", "message"), [
    ("[{span_corruption: {noise_density: 1.5}}]", "span_corruption: noise_density must be between 0 and 1"),
    ("[{span_corruption: {mean_span: 3}}]", "unknown setting 'mean_span'; valid: noise_density"),
    ("[{span_corruption: {max_words: 5000}}]", "would need 250 sentinels"),
    ("[{dedupe: {x: 1}}]", "dedupe: takes no settings"),
    ("[{nosuch: {}}]", "unknown step 'nosuch'"),
])
def test_bad_settings_name_the_step_and_key(tmp_path, preprocess, message):
    with pytest.raises(UserError, match="preprocess") as error:
        load_task(corpus_task(tmp_path, preprocess))
    assert message in str(error.value)


def test_a_missing_text_column_names_the_task_file(tmp_path):
    folder = corpus_task(tmp_path, "[{span_corruption: {field: body}}]")
    with pytest.raises(UserError, match=r"task.yaml: preprocess: span_corruption: no column 'body'"):
        load_splits(load_task(folder), tmp_path / "cache")
