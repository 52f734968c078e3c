"""Tests for pipeline/mixing/: rate rules, nested mixture files, the sampler's determinism, resume, world-size
invariance and convergence, the shipped mixtures, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import SHIPPED_MIXTURES
from pipeline.errors import UserError
from pipeline.mixing.mixture_file import TaskStats, known_mixtures
from pipeline.mixing.rates import STRATEGIES, examples_proportional, temperature_sampling
from pipeline.mixing.report import format_mixture_report, mixture_report_json
from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import check_mixture_file, load_mixture

BUILTIN_TASKS = ("sentiment", "definitions", "antonyms", "translation_en_es", "translation_es_en",
                 "translation_de_en", "headlines", "analogies", "topics", "acronyms", "arithmetic")


def stats(name: str, n: int, **fields) -> TaskStats:
    fields.setdefault("templates", ("plain", "question"))
    return TaskStats(name, n=n, **fields)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def mixture(tmp_path):
    """A nested mixture over tasks of very different sizes, with every variant in play."""
    tasks = {
        "big": stats("big", 5000, has_choices=True),
        "mid": stats("mid", 300, inversion_templates=("inverted",)),
        "small": stats("small", 7, has_choices=True, inversion_templates=("inverted",)),
        "tiny": stats("tiny", 3, templates=("only",)),
        "other": stats("other", 50),
    }
    write(tmp_path, "top", "rate: {rule: examples_proportional, cap: 1000}\n"
                           "members: {big: {}, mid: {}, sub: {weight: 3}}\n"
                           "variants: {few_shot: 0.3, options: 0.6, inversion: 0.2}\n")
    write(tmp_path, "sub", "rate: {rule: uniform}\nmembers: {small: {}, tiny: {}, other: {}}\n"
                           "variants: {few_shot: 0.5}\n")
    return load_mixture("top", tasks, tmp_path)


def assert_batches_equal(a, b):
    for name in ("task", "example", "template", "few_shot", "options", "inverted"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --- rates -----------------------------------------------------------------------------------------------------


def test_rules_match_the_formula_on_hand_computed_cases():
    n = np.array([100.0, 5000.0, 20000.0])
    np.testing.assert_allclose(examples_proportional(n, cap=3000), [100, 3000, 3000])
    np.testing.assert_allclose(examples_proportional(n, cap=3000, scale=2), [200, 3000, 3000])
    np.testing.assert_allclose(temperature_sampling(n, temperature=2, cap=3000), np.sqrt([100, 3000, 3000]))
    np.testing.assert_allclose(STRATEGIES["uniform"](n), [1, 1, 1])
    assert set(STRATEGIES) == {"examples_proportional", "temperature", "uniform", "explicit"}


def test_shares_follow_weights_and_caps_with_documented_precedence(tmp_path):
    tasks = {"a": stats("a", 1000), "b": stats("b", 5000, cap=4000), "c": stats("c", 400, cap=4000),
             "d": stats("d", 9000)}
    # a: 2 × 1000; b: its task cap 4000 beats the level's 3000; c: member cap 100 beats the task cap;
    # d: the level's cap 3000.
    write(tmp_path, "m", "rate: {rule: examples_proportional, cap: 3000}\n"
                         "members: {a: {weight: 2}, b: {}, c: {cap: 100}, d: {}}\n")
    shares = load_mixture("m", tasks, tmp_path).shares
    total = 2000 + 4000 + 100 + 3000
    assert shares == pytest.approx({"a": 2000 / total, "b": 4000 / total, "c": 100 / total, "d": 3000 / total})


def test_temperature_flattens_toward_uniform(tmp_path):
    tasks = {"a": stats("a", 100), "b": stats("b", 400), "c": stats("c", 10000)}
    write(tmp_path, "t2", "rate: {rule: temperature, temperature: 2}\nmembers: {a: {}, b: {}, c: {}}\n")
    write(tmp_path, "hot", "rate: {rule: temperature, temperature: 1000000}\nmembers: {a: {}, b: {}, c: {}}\n")
    write(tmp_path, "t1", "rate: {rule: temperature, temperature: 1}\nmembers: {a: {}, b: {}, c: {}}\n")
    assert load_mixture("t2", tasks, tmp_path).shares == pytest.approx({"a": 10 / 130, "b": 20 / 130, "c": 100 / 130})
    assert load_mixture("t1", tasks, tmp_path).shares == pytest.approx({"a": 100 / 10500, "b": 400 / 10500,
                                                                        "c": 10000 / 10500})
    assert list(load_mixture("hot", tasks, tmp_path).shares.values()) == pytest.approx([1 / 3] * 3, abs=1e-4)


def test_nested_levels_are_normalised_separately(mixture):
    top = {child.name: child for child in mixture.root.children}
    # top level: big min(5000, 1000) = 1000, mid 300, sub 3 × min(7 + 3 + 50, 1000) = 180
    assert top["sub"].share == pytest.approx(180 / 1480)
    assert mixture.shares["big"] == pytest.approx(1000 / 1480)
    for name in ("small", "tiny", "other"):  # uniform inside sub
        assert mixture.shares[name] == pytest.approx(180 / 1480 / 3)
    assert sum(mixture.shares.values()) == pytest.approx(1.0)


def test_variants_are_inherited_and_apply_only_where_the_task_allows(mixture):
    variants = {leaf.name: leaf.variants for leaf in mixture.leaves}
    assert (variants["big"].few_shot, variants["big"].options, variants["big"].inversion) == (0.3, 0.6, 0.0)
    # sub sets few_shot itself and inherits options and inversion from top
    assert (variants["small"].few_shot, variants["small"].options, variants["small"].inversion) == (0.5, 0.6, 0.2)
    assert (variants["tiny"].few_shot, variants["tiny"].options, variants["tiny"].inversion) == (0.5, 0.0, 0.0)


def test_flan2022_top_level_gets_exactly_the_published_weights():
    leaves = check_mixture_file("flan2022", SHIPPED_MIXTURES).leaves
    rng = np.random.default_rng(0)
    tasks = {leaf.name: stats(leaf.name, int(rng.integers(1, 400_000))) for leaf in leaves}
    mixture = load_mixture("flan2022", tasks, SHIPPED_MIXTURES)
    published = {"flan2021": 0.40, "t0": 0.32, "niv2": 0.20, "cot": 0.05, "dialog": 0.03}
    caps = {"flan2021": 30_000, "t0": 20_000, "niv2": 5_000, "cot": 100_000, "dialog": 200_000}
    for sub in mixture.root.children:
        short = sub.name.removeprefix("flan2022/")
        assert sub.share == pytest.approx(published[short], abs=1e-12)
        assert sum(leaf.share for leaf in sub.walk() if leaf.stats) == pytest.approx(published[short])
        sizes = np.array([min(leaf.n, caps[short]) for leaf in sub.children])
        assert [leaf.cap for leaf in sub.children] == [caps[short]] * len(sub.children)
        assert [leaf.rate for leaf in sub.children] == pytest.approx(list(sizes / sizes.sum()))


# --- the sampler -----------------------------------------------------------------------------------------------


def test_same_seed_same_sequence_other_seed_other_sequence(mixture):
    a, b, c = MixtureSampler(mixture, seed=3), MixtureSampler(mixture, seed=3), MixtureSampler(mixture, seed=4)
    for _ in range(20):
        batch = a.next_batch(32)
        assert_batches_equal(batch, b.next_batch(32))
    assert not np.array_equal(batch.example, c.next_batch(32).example)


def test_state_dict_round_trip_mid_epoch_continues_identically(mixture):
    sampler = MixtureSampler(mixture, seed=1)
    for _ in range(37):
        sampler.next_batch(24)
    state = json.loads(json.dumps(sampler.state_dict()))  # as a checkpoint stores it
    assert any(t["epoch"] > 0 for t in state["tasks"].values())  # small tasks have wrapped ...
    assert any(t["cursor"] > 0 for t in state["tasks"].values())  # ... and some are mid-epoch
    resumed = MixtureSampler(mixture, seed=1)
    resumed.load_state_dict(state)
    for _ in range(50):
        assert_batches_equal(sampler.next_batch(24), resumed.next_batch(24))
    np.testing.assert_array_equal(sampler.counts, resumed.counts)
    assert resumed.step == sampler.step == 87


def test_load_state_dict_refuses_another_run(mixture, tmp_path):
    state = MixtureSampler(mixture, seed=1).state_dict()
    with pytest.raises(UserError, match="seed"):
        MixtureSampler(mixture, seed=2).load_state_dict(state)
    state["tasks"]["big"]["n"] = 4999  # the data changed under the checkpoint
    with pytest.raises(UserError, match="tasks"):
        MixtureSampler(mixture, seed=1).load_state_dict(state)


def test_global_batches_do_not_depend_on_the_number_of_processes(mixture):
    reference = MixtureSampler(mixture, seed=5)
    batches = [reference.next_batch(16) for _ in range(30)]
    for world_size in (1, 2, 4):
        ranks = [MixtureSampler(mixture, seed=5) for _ in range(world_size)]
        for expected in batches:
            slices = [sampler.next_batch(16).for_rank(rank, world_size) for rank, sampler in enumerate(ranks)]
            for name in ("task", "example", "template", "few_shot", "options", "inverted"):
                np.testing.assert_array_equal(np.concatenate([getattr(s, name) for s in slices]),
                                              getattr(expected, name))


def test_resume_with_another_number_of_processes_continues_the_same_data(mixture):
    reference = MixtureSampler(mixture, seed=5)
    batches = [reference.next_batch(16) for _ in range(20)]
    two = MixtureSampler(mixture, seed=5)  # rank 0 of a 2-process run, checkpointed after 10 steps
    for _ in range(10):
        two.next_batch(16).for_rank(0, 2)
    four = [MixtureSampler(mixture, seed=5) for _ in range(4)]
    for sampler in four:
        sampler.load_state_dict(two.state_dict())
    for expected in batches[10:]:
        slices = [sampler.next_batch(16).for_rank(rank, 4) for rank, sampler in enumerate(four)]
        np.testing.assert_array_equal(np.concatenate([s.example for s in slices]), expected.example)


def test_realized_shares_converge_to_targets(mixture):
    sampler = MixtureSampler(mixture, seed=0)
    sampler.draw(100_000)
    realized = sampler.realized_shares()
    for name, target in mixture.shares.items():
        assert abs(realized[name] - target) < 0.01, name
    report = mixture_report_json(mixture, sampler)
    for member in report["members"]:
        for name, variant in member["variants"].items():
            if member["realized"] > 0.05:  # enough draws of this task for a 2-point bound
                assert abs(variant["realized"] - variant["target"]) < 0.02, (member["name"], name)


def test_no_example_repeats_within_a_task_epoch(mixture):
    sampler = MixtureSampler(mixture, seed=2)
    drawn = {name: [] for name in sampler.task_names}
    for _ in range(300):
        batch = sampler.next_batch(20)
        for task, example in zip(batch.task, batch.example, strict=True):
            drawn[sampler.task_names[task]].append(int(example))
    for leaf in mixture.leaves:
        sequence = drawn[leaf.name]
        epochs = [sequence[i:i + leaf.n] for i in range(0, len(sequence) - leaf.n + 1, leaf.n)]
        assert epochs or leaf.name == "big", leaf.name
        assert all(sorted(epoch) == list(range(leaf.n)) for epoch in epochs), leaf.name
        assert len(epochs) < 2 or epochs[0] != epochs[1]  # each epoch reshuffles


def test_a_tasks_example_order_does_not_depend_on_batch_size(mixture):
    """Each task walks its own seeded permutations, however its draws fall into batches."""
    sequences = []
    for batch_size in (1, 7, 256):
        sampler = MixtureSampler(mixture, seed=9)
        drawn = {name: [] for name in sampler.task_names}
        for _ in range(3000 // batch_size):
            batch = sampler.next_batch(batch_size)
            for task, example in zip(batch.task, batch.example, strict=True):
                drawn[sampler.task_names[task]].append(int(example))
        sequences.append(drawn)
    for name in sequences[0]:
        shortest = min(len(drawn[name]) for drawn in sequences)
        assert shortest > 0
        assert sequences[0][name][:shortest] == sequences[1][name][:shortest] == sequences[2][name][:shortest]


def test_templates_and_flags_respect_what_each_task_has(mixture):
    sampler = MixtureSampler(mixture, seed=0)
    draws = [draw for _ in range(200) for draw in sampler.next_batch(50).draws()]
    by_task = {leaf.name: leaf.stats for leaf in mixture.leaves}
    for draw in draws:
        task = by_task[draw.task]
        assert draw.template in (task.inversion_templates if draw.inverted else task.templates)
        assert not draw.options or task.has_choices
        assert not draw.inverted or task.inversion_templates
    big_templates = {d.template for d in draws if d.task == "big"}
    assert big_templates == {"plain", "question"}


def test_homogeneous_batches_hold_one_task_each(mixture):
    sampler = MixtureSampler(mixture, seed=0, homogeneous=True)
    for _ in range(400):
        batch = sampler.next_batch(8)
        assert len(set(batch.task.tolist())) == 1
    for name, share in sampler.realized_shares().items():
        assert abs(share - mixture.shares[name]) < 0.06, name


def test_for_rank_needs_an_even_split(mixture):
    batch = MixtureSampler(mixture).next_batch(10)
    with pytest.raises(UserError, match="multiple of the number of processes"):
        batch.for_rank(0, 4)


def test_report_shows_targets_realized_and_tree(mixture):
    sampler = MixtureSampler(mixture, seed=0)
    sampler.draw(10_000)
    report = mixture_report_json(mixture, sampler)
    assert {"name", "target", "realized", "n", "cap"} <= set(report["members"][0])
    assert sum(m["realized"] for m in report["members"]) == pytest.approx(1.0)
    assert report["tree"]["children"][2]["name"] == "sub"
    assert report["draws"] == 10_000
    json.dumps(report)
    text = format_mixture_report(mixture, sampler)
    assert "└─ sub" in text and "   └─ other" in text and "10,000 draws" in text


# --- shipped mixtures ------------------------------------------------------------------------------------------


def builtin_stats() -> dict[str, TaskStats]:
    return {name: stats(name, 500 * (i + 1), has_choices=i % 2 == 0) for i, name in enumerate(BUILTIN_TASKS)}


@pytest.mark.parametrize("name", known_mixtures(SHIPPED_MIXTURES))
def test_every_shipped_mixture_is_well_formed(name):
    mixture = check_mixture_file(name, SHIPPED_MIXTURES)
    assert mixture.leaves and sum(mixture.shares.values()) == pytest.approx(1.0)


def test_default_and_single_task_mixtures_cover_the_builtin_suite():
    tasks = builtin_stats()
    default = load_mixture("default", tasks, SHIPPED_MIXTURES)
    assert default.held_out and set(default.held_out).isdisjoint(default.shares)
    assert set(default.shares) | set(default.held_out) == set(BUILTIN_TASKS)
    for name in BUILTIN_TASKS:
        single = load_mixture(f"single/{name}", tasks, SHIPPED_MIXTURES)
        assert single.shares == {name: 1.0}
        assert single.root.variants == default.root.variants  # runs differ only in what is trained on


# --- bad input -------------------------------------------------------------------------------------------------

TASKS = {"a": stats("a", 100), "b": stats("b", 200), "empty": stats("empty", 0),
         "frozen": stats("frozen", 100, held_out=True)}
BAD = {
    "negative weight": ("members: {a: {weight: -1}}", "members.a.weight"),
    "zero-sum weights": ("members: {a: {weight: 0}, b: {weight: 0}}", "members: every member's rate is 0"),
    "cap below 1": ("rate: {cap: 0.5}\nmembers: {a: {}}", "rate.cap"),
    "member cap below 1": ("rate: {cap: 10}\nmembers: {a: {cap: 0}}", "members.a.cap"),
    "zero temperature": ("rate: {rule: temperature, temperature: 0}\nmembers: {a: {}}", "rate.temperature"),
    "negative temperature": ("rate: {rule: temperature, temperature: -1}\nmembers: {a: {}}", "rate.temperature"),
    "missing temperature": ("rate: {rule: temperature}\nmembers: {a: {}}", "rate.temperature is required"),
    "unknown rule": ("rate: {rule: softmax}\nmembers: {a: {}}", "rate.rule"),
    "parameter the rule ignores": ("rate: {rule: uniform, cap: 5}\nmembers: {a: {}}", "rate.cap is not used"),
    "explicit without weight": ("rate: {rule: explicit}\nmembers: {a: {weight: 1}, b: {}}", "members.b"),
    "unknown member": ("members: {a: {}, nope: {}}", "members.nope"),
    "unknown member key": ("members: {a: {wieght: 2}}", "members.a: unknown key 'wieght'"),
    "unknown file key": ("members: {a: {}}\nmix: 1", "unknown key 'mix'"),
    "empty mixture": ("members: {}", "members: empty mixture"),
    "no members": ("rate: {rule: uniform}", "members: empty mixture"),
    "held out and trained": ("members: {a: {}, b: {}}\nheld_out: [b]", "held_out: task 'b'"),
    "unknown held-out task": ("members: {a: {}}\nheld_out: [zz]", "held_out: unknown task 'zz'"),
    "task held out in task.yaml": ("members: {a: {}, frozen: {}}", "members.frozen"),
    "task without examples": ("rate: {rule: uniform}\nmembers: {a: {}, empty: {}}", "members.empty"),
    "share above 1": ("members: {a: {}}\nvariants: {few_shot: 1.5}", "variants.few_shot"),
    "unknown variant": ("members: {a: {}}\nvariants: {two_shot: 0.5}", "variants: unknown key 'two_shot'"),
    "not YAML": ("members: {a: {}", "not valid YAML"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_file_and_key(case, tmp_path):
    text, key = BAD[case]
    path = write(tmp_path, "bad", text)
    with pytest.raises(UserError) as error:
        load_mixture("bad", TASKS, tmp_path)
    message = str(error.value)
    assert str(path) in message and key in message and "\n" not in message


NESTED_BAD = {  # files written, the one loaded first, what the message must say (the file at fault, its key)
    "cycle": ({"x": "members: {a: {}, y: {}}", "y": "members: {b: {}, x: {}}"},
              r"y\.yaml: members\.x: cycle of mixtures x\.yaml -> y\.yaml -> x\.yaml"),
    "held out above, trained below": ({"x": "members: {a: {}, y: {}}\nheld_out: [b]", "y": "members: {b: {}}"},
                                      r"x\.yaml: held_out: task 'b' is also trained on \(members of .*y\.yaml\)"),
    "task listed twice": ({"x": "members: {a: {}, y: {}}", "y": "members: {a: {}}"},
                          r"y\.yaml: members\.a: task 'a' is also listed in .*x\.yaml"),
}


@pytest.mark.parametrize("case", NESTED_BAD)
def test_nested_faults_name_the_file_at_fault(case, tmp_path):
    files, message = NESTED_BAD[case]
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(UserError, match=message):
        load_mixture("x", TASKS, tmp_path)


def test_unknown_mixture_lists_the_known_ones(tmp_path):
    write(tmp_path, "real", "members: {a: {}}")
    with pytest.raises(UserError, match="unknown mixture 'imaginary'.*known mixtures: real"):
        load_mixture("imaginary", TASKS, tmp_path)
    with pytest.raises(UserError, match="missing.yaml: mixture file not found"):
        load_mixture(tmp_path / "missing.yaml", TASKS, tmp_path)
