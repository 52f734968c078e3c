import pytest

from pipeline.errors import UserError
from pipeline.tasks import rendering
from pipeline.tasks.rendering import ExemplarPool, Variant, render_example, render_split
from pipeline.tasks.splits import load_split
from pipeline.tasks.task import load_tasks


@pytest.fixture
def task(tasks_dir):
    return load_tasks(tasks_dir)["tiny"]


def test_zero_shot_and_options_variants(task):
    example = {"text": "great film", "label": "positive"}
    plain = render_example(task, task.templates["ask"], example, index=0, seed=0)
    assert (plain.input, plain.target) == ("Review: great film\nPositive or negative?", "positive")
    with_options = render_example(task, task.templates["ask"], example, index=0, seed=0, variant=Variant(options=True))
    assert with_options.input.endswith("\n\nOPTIONS:\n- negative\n- positive")
    inline = render_example(task, task.templates["options_inline"], example, index=0, seed=0)
    assert inline.input == "great film\n\nSentiment:"  # the empty {{ options }} leaves no gap
    inline = render_example(task, task.templates["options_inline"], example, index=0, seed=0,
                            variant=Variant(options=True))
    assert inline.input == "great film\n\nOPTIONS:\n- negative\n- positive\nSentiment:"


def test_inversion_template_target_is_free_text(task):
    example = {"text": "great film", "label": "positive"}
    inverted = render_example(task, task.templates["guess"], example, index=0, seed=0)
    assert (inverted.input, inverted.target) == ("Write a positive sentence.", "great film")


def test_target_outside_answer_choices_is_an_error(task):
    with pytest.raises(UserError, match=r"ask.jinja: example 3 of task 'tiny': target 'meh' is not one of"):
        render_example(task, task.templates["ask"], {"text": "x", "label": "meh"}, index=3, seed=0)


def test_few_shot_excludes_the_example_and_is_seeded(task, cache_dir):
    train = load_split(task, "train", cache_dir)
    pool = ExemplarPool(train.to_list(), same_split=True)
    for index in range(len(train)):
        rendered = render_example(task, task.templates["ask"], train[index], index=index, seed=0,
                                  variant=Variant(few_shot=True), exemplars=pool,
                                  k=3, max_input_length=200)
        blocks = rendered.input.split("\n\n")
        assert len(blocks) == 4 and blocks[-1] == f"Review: {train[index]['text']}\nPositive or negative?"
        assert all(train[index]["text"] not in block for block in blocks[:-1])
    again = render_example(task, task.templates["ask"], train[5], index=5, seed=0, variant=Variant(few_shot=True),
                           exemplars=pool, k=3, max_input_length=200)
    other_seed = render_example(task, task.templates["ask"], train[5], index=5, seed=1, variant=Variant(few_shot=True),
                                exemplars=pool, k=3, max_input_length=200)
    first = render_example(task, task.templates["ask"], train[5], index=5, seed=0, variant=Variant(few_shot=True),
                           exemplars=pool, k=3, max_input_length=200)
    assert again == first and other_seed != first


def test_few_shot_prunes_exemplars_to_fit(task, cache_dir):
    train = load_split(task, "train", cache_dir)
    kwargs = dict(index=0, seed=0, variant=Variant(few_shot=True), exemplars=ExemplarPool(train.to_list()), k=3)
    long = render_example(task, task.templates["ask"], train[0], max_input_length=1000, **kwargs)
    short = render_example(task, task.templates["ask"], train[0], max_input_length=25, **kwargs)
    assert long.input.count("\n\n") == 3 and short.input.count("\n\n") < 3
    assert short.input.endswith(long.input.split("\n\n")[-1])


def test_render_split_rows_cache_and_invalidation(task, cache_dir, tasks_dir, monkeypatch):
    first = render_split(task, "validation", cache_dir=cache_dir)
    assert len(first) == 5 * 2 and first["template"][:2] == ["ask", "options_inline"]
    assert first["index"][::2] == list(range(5))

    calls = []
    original = rendering.render_example
    monkeypatch.setattr(rendering, "render_example", lambda *a, **k: calls.append(1) or original(*a, **k))
    second = render_split(task, "validation", cache_dir=cache_dir)
    assert calls == [] and second["input"] == first["input"]  # a cache hit renders nothing

    (tasks_dir / "tiny" / "ask.jinja").write_text("Text: {{ text }}\n|||\n{{ label }}\n")
    edited = load_tasks(tasks_dir)["tiny"]
    third = render_split(edited, "validation", cache_dir=cache_dir)
    assert calls and third["input"][0].startswith("Text: ")


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_a_damaged_rendered_cache_is_reported_and_rendered_again(task, cache_dir, capsys, damage):
    first = render_split(task, "validation", cache_dir=cache_dir).to_list()  # read before the file is damaged
    [folder] = (cache_dir / "rendered" / "tiny").iterdir()
    [arrow] = folder.glob("*.arrow")
    data = bytearray(arrow.read_bytes())
    if damage == "truncate":
        arrow.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        arrow.write_bytes(bytes(data))
    else:
        (folder / "manifest.json").unlink()
    capsys.readouterr()
    again = render_split(task, "validation", cache_dir=cache_dir)
    assert "damaged" in capsys.readouterr().err and again.to_list() == first
    assert render_split(task, "validation", cache_dir=cache_dir).to_list() == first
    assert "damaged" not in capsys.readouterr().err  # rebuilt with a manifest: verified quietly from now on
    assert [p.name for p in (cache_dir / "rendered" / "tiny").iterdir()] == [folder.name]


def test_render_split_is_independent_of_process_count(task, cache_dir, tmp_path):
    one = render_split(task, "train", cache_dir=cache_dir, variant=Variant(few_shot=True, options=True))
    two = render_split(task, "train", cache_dir=tmp_path / "other", variant=Variant(few_shot=True, options=True),
                       num_proc=2)
    assert one["input"] == two["input"]
