"""promptsource import: the two unchanged promptsource files, plus format and rendering cases written from the
format and from promptsource's `Template.apply` (tests/test_promptsource_library.py checks all 2,085 templates)."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.importers.promptsource import import_promptsource, snake_case, summary_table
from pipeline.tasks.rendering import ZERO_SHOT, Variant, render_example
from pipeline.tasks.task import load_task

FIXTURES = Path(__file__).parent / "fixtures" / "promptsource"  # copies of two promptsource files, unchanged
AMAZON = FIXTURES / "amazon_polarity.templates.yaml"
SAMSUM = FIXTURES / "samsum.templates.yaml"
DIALOGUE = "Amanda: I baked cookies. Do you want some?\nJerry: Sure!"


def promptsource_file(tmp_path: Path, *templates: dict, top: str = "dataset: demo\n") -> Path:
    """A promptsource templates.yaml in its own format: `!Template` mappings keyed by id, `!TemplateMetadata`."""
    lines = [top, "templates:\n"]
    for number, template in enumerate(templates):
        template_id = template.get("id", f"00000000-0000-0000-0000-{number:012d}")
        body = {
            "answer_choices": template.get("answer_choices"),
            "id": template_id,
            "jinja": template["jinja"],
            "name": template["name"],
            "reference": template.get("reference", ""),
        }
        metadata = template.get("metadata", {"original_task": True, "metrics": ["Accuracy"], "languages": ["en"]})
        lines.append(f"  {template_id}: !Template\n")
        lines.append(textwrap.indent(yaml.safe_dump(body, sort_keys=True), "    "))
        lines.append("    metadata: !TemplateMetadata\n")
        lines.append(textwrap.indent(yaml.safe_dump(metadata, sort_keys=True), "      "))
    path = tmp_path / "templates.yaml"
    path.write_text("".join(lines))
    return path


def imported(path: Path, out: Path, **options):
    """The one task folder a file became."""
    (result,) = import_promptsource(path, out, **options)
    return result.folder


def one(tmp_path: Path, jinja: str, answer_choices=None, metadata=None):
    """The task of a file holding one template, and the template's name."""
    template = {"name": "T", "jinja": jinja, "answer_choices": answer_choices}
    if metadata is not None:
        template["metadata"] = metadata
    tmp_path.mkdir(parents=True, exist_ok=True)
    folder = imported(promptsource_file(tmp_path, template), tmp_path / "out")
    return load_task(folder) if folder else None


def render(task, template_name: str, example: dict, index: int = 0, variant: Variant = ZERO_SHOT):
    return render_example(task, task.templates[template_name], example, index=index, seed=0, variant=variant)


# --- the two promptsource files -----------------------------------------------------------------------


def test_amazon_polarity_imports_loads_and_renders(tmp_path):
    folder = imported(AMAZON, tmp_path / "templates")
    assert folder == tmp_path / "templates" / "amazon_polarity"
    task = load_task(folder)
    assert task.style == "promptsource" and task.source == {"path": "amazon_polarity"}
    assert task.splits == {"train": "train", "validation": "validation"}
    assert task.metrics == ("accuracy", "rank_classification")
    assert len(task.templates) == 9 and "is_this_review" in task.templates
    header = task.yaml_text.splitlines()[0]
    assert str(AMAZON) in header and "flanpipe render amazon_polarity -n 3" in header

    example = {"title": "Works great", "content": "Charges fast, sturdy cable.", "label": 1}
    rendered = render(task, "is_this_review", example)
    assert rendered.input == (
        "Title: Works great\nReview: Charges fast, sturdy cable.\nIs the review positive or negative?"
    )
    assert (rendered.target, rendered.choices) == ("Positive", ("Negative", "Positive"))
    assert render(task, "is_this_review_negative", example).target == "No"  # answer_choices "Yes ||| No"
    assert render(task, "user_satisfied", {**example, "label": 0}).target == "dissatisfied"

    template = task.templates["user_recommend_this_product"]
    assert template.answer_choices == "No ||| Yes" and template.metrics == ("accuracy", "rank_classification")
    assert template.metadata["name"] == "User_recommend_this_product"
    assert template.metadata["id"] == "3a48f287-6a4b-4df0-ab2d-2eaf6cb8e53d"
    assert template.metadata["reference"].startswith("Reformulation equivalent to sent analysis")
    assert template.metadata["metrics"] == ["Accuracy"] and template.metadata["languages"] == ["en"]
    assert template.metadata["original_task"] is True and template.metadata["choices_in_prompt"] is False


def test_samsum_imports_loads_and_renders(tmp_path):
    task = load_task(imported(SAMSUM, tmp_path))
    assert task.source == {"path": "samsum"} and task.metrics == ("rouge",)
    assert len(task.templates) == 7
    example = {"dialogue": DIALOGUE, "summary": "Amanda baked cookies and will share with Jerry."}
    summarize = render(task, "summarize", example)  # promptsource: 'Summarize: {{dialogue}}|||\n{{summary}}'
    assert (summarize.input, summarize.target) == (f"Summarize: {DIALOGUE}", example["summary"])
    assert (tmp_path / "samsum" / "summarize.jinja").read_text().endswith("Summarize: {{dialogue}}|||\n{{summary}}")
    assert render(task, "to_sum_up_this_dialog", example).input == f"{DIALOGUE}\nTo sum up this dialog:"
    assert render(task, "write_a_dialogue_that_match_this_summary", example).target == DIALOGUE


def test_cli_prints_the_summary(tmp_path, capsys):
    main(["import-promptsource", str(SAMSUM), "--out", str(tmp_path), "--task", "dialogue_summaries"])
    out = capsys.readouterr().out
    assert "| 1 | 7 | 7 | 0 | 1 |" in out and "flanpipe lint " + str(tmp_path / "dialogue_summaries") in out
    assert load_task(tmp_path / "dialogue_summaries").source == {"path": "samsum"}


# --- rendering as promptsource's Template.apply ----------------------------------------------------------


def test_one_pass_then_the_output_is_split(tmp_path):
    """`|||` inside `{% if %}` branches (copa, trec): rendered once, the output split; no pair is dropped."""
    jinja = "{{ premise }} {% if question == 'cause' %}Why? ||| {{ a }}{% else %}What next? ||| {{ b }}{% endif %}"
    task = one(tmp_path, jinja)
    assert (render(task, "t", {"premise": "P.", "question": "cause", "a": "A", "b": "B"}).input,
            render(task, "t", {"premise": "P.", "question": "effect", "a": "A", "b": "B"}).target) == ("P. Why?", "B")


def test_rows_without_a_pair_are_dropped_with_the_reason(tmp_path):
    task = one(tmp_path, "{% if answers %}{{ q }} ||| {{ answers[0] }}{% endif %}")  # squad_v2's idiom
    kept = render(task, "t", {"q": "Q?", "answers": ["A"]})
    assert (kept.input, kept.target, kept.dropped) == ("Q?", "A", "")
    dropped = render(task, "t", {"q": "Q?", "answers": []})
    assert (dropped.input, dropped.target) == ("", "") and "1 parts" in dropped.dropped
    assert "empty target" in render(one(tmp_path / "b", "{{ q }} ||| {{ a }}"), "t", {"q": "Q", "a": " "}).dropped


def test_a_draw_used_on_both_sides_is_the_same_draw(tmp_path):
    jinja = '{% set pick = ["x", "y", "z", "w"] | choice %}Say {{ pick }}. ||| {{ pick }}'
    task = one(tmp_path, jinja)
    draws = [render(task, "t", {}, index=i) for i in range(20)]
    assert all(d.input == f"Say {d.target}." for d in draws) and len({d.target for d in draws}) > 1
    assert draws == [render(task, "t", {}, index=i) for i in range(20)]  # seeded per (seed, task, template, index)


def test_local_lists_may_be_mutated_and_underscore_names_set(tmp_path):
    jinja = ("{% set _seen = [] %}{% for w in words %}{% if w not in _seen %}{{ _seen.append(w) or '' }}{% endif %}"
             "{% endfor %}{% set d = {} %}{% set _ = d.update({'n': _seen | length}) %}{{ _seen | join(',') }} ||| "
             "{{ d.n }}")
    task = one(tmp_path, jinja)
    words = ["a", "b", "a"]
    rendered = render(task, "t", {"words": words})
    assert (rendered.input, rendered.target) == ("a,b", "2") and words == ["a", "b", "a"]


def test_attribute_walks_are_still_refused(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Walk", "jinja": "{{ q.__class__ }} ||| y"},
                             {"name": "Key", "jinja": "{{ q['__class__'] }} ||| y"},
                             {"name": "Rng", "jinja": "{{ __rng__ }} ||| y"}, {"name": "Fine", "jinja": "{{ q }} ||| y"})
    (result,) = import_promptsource(path, tmp_path / "walk")
    assert list(result.templates) == ["fine"]
    assert [name for name, _ in result.skipped] == ["Walk", "Key", "Rng"]
    assert all("refused" in why for _, why in result.skipped)
    task = one(tmp_path, "{{ q.upper.__self__ if false else q.mro }} ||| y")  # refused when the file is read
    assert task is None


def test_promptsource_semantics_missing_fields_truncation_escaping_and_choices(tmp_path):
    task = one(tmp_path, "{{ text }} {{ missing }}{{ items[5] }}. ||| {{ answer_choices[label] }}",
               answer_choices="no ||| yes")
    long = "word " * 600
    rendered = render(task, "t", {"text": long, "items": [], "label": 1})
    assert rendered.input.startswith("word word") and rendered.input.endswith("... .")  # truncate(2048) adds '...'
    assert len(rendered.input) <= 2048 + 2 and rendered.target == "yes"
    assert render(task, "t", {"text": "x", "items": [], "label": 3}).dropped == "renders an empty target"
    piped = render(task, "t", {"text": "a ||| b", "items": [], "label": 1})
    assert (piped.input, piped.target) == ("a ||| b .", "yes")  # a `|||` in the data does not split


def test_a_target_outside_the_answer_choices_renders(tmp_path):
    """imdb's negation template: promptsource renders it; rank classification leaves such rows out."""
    task = one(tmp_path, "{{ t }} ||| {{ answer_choices[1 - label] }} not", answer_choices="bad ||| good")
    rendered = render(task, "t", {"t": "Fine film.", "label": 1})
    assert (rendered.target, rendered.choices) == ("bad not", ("bad", "good"))


def test_choices_in_prompt_keeps_the_options_variant_from_listing_them_again(tmp_path):
    jinja = "{{ q }} Options: {{ answer_choices | join(', ') }} ||| {{ answer_choices[label] }}"
    listed = one(tmp_path / "a", jinja, "no ||| yes", {"choices_in_prompt": True, "metrics": ["Accuracy"]})
    unlisted = one(tmp_path / "b", "{{ q }} ||| {{ answer_choices[label] }}", "no ||| yes",
                   {"choices_in_prompt": False, "metrics": ["Accuracy"]})
    example = {"q": "Ok?", "label": 0}
    assert render(listed, "t", example, variant=Variant(options=True)).input == "Ok? Options: no, yes"
    assert render(unlisted, "t", example, variant=Variant(options=True)).input == "Ok?\n\nOPTIONS:\n- no\n- yes"


# --- the format -----------------------------------------------------------------------------------------


def test_answer_choices_as_a_jinja_expression(tmp_path):
    path = promptsource_file(tmp_path, {
        "name": "Pick a color",
        "answer_choices": '{{ colors | join(" ||| ") }}',
        "jinja": '{{ question }} Options: {{ answer_choices | join(", ") }}|||{{ answer_choices[label] }}',
    })
    task = load_task(imported(path, tmp_path / "out"))
    assert task.templates["pick_a_color"].answer_choices == '{{ colors | join(" ||| ") }}'
    assert task.metrics == ("accuracy", "rank_classification")
    rendered = render(task, "pick_a_color", {"question": "Sky?", "colors": ["red", "blue"], "label": 1})
    assert (rendered.input, rendered.target, rendered.choices) == ("Sky? Options: red, blue", "blue", ("red", "blue"))


def test_metrics_per_template_and_substitutes(tmp_path):
    path = promptsource_file(
        tmp_path,
        {"name": "A", "jinja": "{{ x }} ||| {{ y }}", "metadata": {"metrics": ["Squad", "Other"]}},
        {"name": "B", "jinja": "{{ x }} ||| {{ y }}", "metadata": {"metrics": ["BLEU", "Pearson Correlation"]}},
        {"name": "C", "jinja": "{{ x }} ||| {{ y }}", "metadata": {"metrics": ["Other"]}},
        {"name": "D", "jinja": "{{ x }} ||| {{ y }}", "answer_choices": "p ||| q", "metadata": {"metrics": ["AUC"]}},
    )
    task = load_task(imported(path, tmp_path / "out"))
    assert set(task.metrics) == {"exact_match", "bleu", "rouge", "rank_classification"}
    assert [task.templates[n].metrics for n in "abcd"] == [
        ("exact_match",), ("bleu",), ("rouge",), ("rank_classification",)]
    assert "scored instead by: c (Other -> rouge); d (AUC -> rank_classification)" in task.yaml_text


def test_python_tags_are_refused_without_building_anything(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text("dataset: x\ntemplates:\n  a: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UserError, match=r"refused: .*only promptsource's !Template"):
        import_promptsource(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_template_tag_must_tag_a_mapping(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text("dataset: x\ntemplates:\n  a: !Template 'text'\n")
    with pytest.raises(UserError, match="must tag a mapping"):
        import_promptsource(path, tmp_path / "out")


def test_duplicate_names_get_unique_slugs(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Ask", "jinja": "a ||| b"}, {"name": "ask", "jinja": "c ||| d"})
    assert sorted(load_task(imported(path, tmp_path / "out")).templates) == ["ask", "ask_2"]


def test_missing_dataset_key_is_an_error(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Ask", "jinja": "a ||| b"}, top="")
    with pytest.raises(UserError, match="missing the top-level 'dataset:' key"):
        import_promptsource(path, tmp_path / "out")


def test_task_name_from_dataset_and_subset(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Ask", "jinja": "a ||| b"}, top="dataset: Zaid/coqa_expanded\n")
    assert imported(path, tmp_path / "out").name == "zaid_coqa_expanded"
    assert imported(path, tmp_path / "out", task_name="coqa").name == "coqa"
    with pytest.raises(UserError, match="not a task folder name"):
        import_promptsource(path, tmp_path / "out", task_name="../coqa")


def test_dataset_and_subset_come_from_the_folder_as_promptsource_reads_them(tmp_path):
    """The keys inside the files are wrong in several promptsource files (snli's `subset: None`); the folder is
    what promptsource itself uses, with `Zaid/` and `craffel/` as user namespaces."""
    tree = tmp_path / "promptsource" / "templates"
    for folder, top in [("snli", "dataset: snli\nsubset: None\n"), ("super_glue/rte", "dataset: super_glue\n"),
                        ("Zaid/coqa_expanded", "dataset: coqa_expanded\n"), ("craffel/openai_lambada", "dataset: x\n")]:
        (tree / folder).mkdir(parents=True)
        promptsource_file(tree / folder, {"name": "Ask", "jinja": "{{ a }} ||| {{ b }}"}, top=top)
    results = import_promptsource(tmp_path / "promptsource", tmp_path / "out")
    assert {r.task: (r.dataset, r.subset) for r in results} == {
        "snli": ("snli", None), "super_glue_rte": ("super_glue", "rte"),
        "zaid_coqa_expanded": ("Zaid/coqa_expanded", None), "craffel_openai_lambada": ("craffel/openai_lambada", None)}
    assert load_task(tmp_path / "out" / "super_glue_rte").source == {"path": "super_glue", "name": "rte"}
    assert "| 4 | 4 | 4 | 0 | 4 |" in summary_table(results)


def test_a_template_that_cannot_render_is_skipped_with_its_reason(tmp_path):
    path = promptsource_file(
        tmp_path,
        {"name": "Good", "jinja": "{{ x }} ||| {{ y }}"},
        {"name": "No separator", "jinja": "{{ x }}"},
        {"name": "Broken", "jinja": "{% if x %} ||| y"},
        {"name": "Helper", "jinja": "{{ x | frobnicate }} ||| y"},
        {"name": "Call", "jinja": "{{ enumerate(x) }} ||| y"},
    )
    (result,) = import_promptsource(path, tmp_path / "out")
    assert list(result.templates) == ["good"]
    reasons = dict(result.skipped)
    assert "no '|||'" in reasons["No separator"] and "syntax error" in reasons["Broken"]
    assert "the filter 'frobnicate'" in reasons["Helper"] and "the function 'enumerate()'" in reasons["Call"]
    task = load_task(result.folder)
    assert "# skipped template 'Helper': " in task.yaml_text and len(task.templates) == 1
    assert "skipped: demo: 'Broken': " in summary_table([result])


def test_the_sdist_archive_is_read_without_unpacking(tmp_path):
    import tarfile

    source = promptsource_file(tmp_path, {"name": "Ask", "jinja": "{{ a }} ||| {{ b }}"})
    archive = tmp_path / "promptsource-0.2.3.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="promptsource-0.2.3/promptsource/templates/glue/mrpc/templates.yaml")
        tar.add(SAMSUM, arcname="promptsource-0.2.3/promptsource/templates/samsum/templates.yaml")
    results = import_promptsource(archive, tmp_path / "out")
    assert [(r.task, r.dataset, r.subset) for r in results] == [("glue_mrpc", "glue", "mrpc"), ("samsum", "samsum", None)]
    with pytest.raises(UserError, match="--task names one task; 2 files"):
        import_promptsource(archive, tmp_path / "other", task_name="x")


def test_existing_folder_is_kept_unless_forced(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Ask", "jinja": "a ||| b"})
    out = tmp_path / "out"
    folder = imported(path, out)
    (folder / "ask.jinja").write_text("{#\nmetadata: {name: Ask}\n#}\nedited ||| b")
    with pytest.raises(UserError, match="already exists; pass --force"):
        import_promptsource(path, out)
    assert (folder / "ask.jinja").read_text().endswith("edited ||| b")
    assert imported(path, out, force=True) == folder
    assert (folder / "ask.jinja").read_text().endswith("a ||| b")


def test_a_failed_write_leaves_the_old_folder_and_no_scratch(tmp_path, monkeypatch):
    from pipeline.importers import promptsource

    folder = imported(promptsource_file(tmp_path, {"name": "First", "jinja": "{{ x }} ||| {{ y }}"}), tmp_path / "out")

    def refuse(folder):
        raise UserError("simulated failure")

    monkeypatch.setattr(promptsource, "load_task", refuse)
    with pytest.raises(UserError, match="simulated failure"):
        import_promptsource(promptsource_file(tmp_path, {"name": "Second", "jinja": "a ||| b"}), tmp_path / "out",
                            force=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["demo"]
    assert sorted(p.name for p in folder.iterdir()) == ["first.jinja", "task.yaml"]


def test_older_promptsource_fields_are_accepted(tmp_path):
    """Older promptsource files: answer_choices as a YAML list, extra keys (answer_choices_key, _do_eval, metric);
    race's own `options` column is just data in a promptsource-style task."""
    path = tmp_path / "templates.yaml"
    path.write_text(textwrap.dedent("""\
        dataset: race
        subset: high
        templates:
          4ef4f2ee: !Template
            answer_choices:
            - A
            - B
            answer_choices_key: null
            id: 4ef4f2ee
            jinja: 'Article: {{article}}

              Options: A: {{options.0}} B: {{options.1}}

              |||

              {{answer}}'
            metadata: !TemplateMetadata
              _do_eval: true
              metric: null
              original_task: true
            name: Taking a test
            reference: ''
        """))
    task = load_task(imported(path, tmp_path / "out"))
    assert task.name == "race_high" and task.source == {"path": "race", "name": "high"}
    template = task.templates["taking_a_test"]
    assert template.answer_choices == ["A", "B"] and template.metadata["_do_eval"] is True
    rendered = render(task, "taking_a_test", {"article": "Text.", "options": ["x", "y"], "answer": "B"})
    assert (rendered.input, rendered.target) == ("Article: Text.\nOptions: A: x B: y", "B")


def test_promptsource_helpers_zip_and_most_frequent(tmp_path):
    jinja = "{% for q, a in zip(questions, answers) %}{{ q }}={{ a }} {% endfor %}||| {{ votes | most_frequent | first }}"
    task = one(tmp_path, jinja)
    rendered = render(task, "t", {"questions": ["a", "b"], "answers": [1, 2], "votes": ["x", "y", "y"]})
    assert (rendered.input, rendered.target) == ("a=1 b=2", "y")


def test_snake_case():
    assert snake_case("Summarize this dialogue:") == "summarize_this_dialogue"
    assert snake_case("Zaid/coqa") == "zaid_coqa" and snake_case("Ünïcode dash") == "unicode_dash"


# --- dropped examples in evaluation and training ---------------------------------------------------------


def _local_task(tmp_path: Path) -> Path:
    """A promptsource-style task on local rows where the `answer` template drops unanswerable rows (squad_v2)."""
    path = promptsource_file(
        tmp_path,
        {"name": "Answer", "jinja": "{% if answers %}{{ q }} ||| {{ answers[0] }}{% endif %}",
         "metadata": {"metrics": ["Squad"]}},
        {"name": "Topic", "jinja": "{{ q }} Topic? ||| {{ topic }}", "metadata": {"metrics": ["Accuracy"]}},
    )
    folder = imported(path, tmp_path / "tasks")
    rows = [{"q": f"Q{i}?", "answers": [f"A{i}"] if i % 2 else [], "topic": "t"} for i in range(40)]
    (folder / "data.jsonl").write_text("".join(f"{json.dumps(row)}\n" for row in rows))
    task_yaml = (folder / "task.yaml").read_text().replace("source: {path: demo}", "source: {files: data.jsonl}")
    (folder / "task.yaml").write_text(task_yaml.replace("splits: {train: train, validation: validation}",
                                                        "splits: {train: train}"))
    return folder


def test_evaluation_rows_take_the_next_template_where_one_drops(tmp_path):
    from pipeline.config import DataConfig
    from pipeline.evaluate.evaluator import evaluation_rows

    task = load_task(_local_task(tmp_path))
    data = DataConfig(cache_dir=str(tmp_path / "cache"))
    rows = evaluation_rows(task, "train", data, seed=0, limit=None)
    train = load_split_rows(task, data)
    assert len(rows) == len(train) and all(row.input and row.target for row in rows)
    assert all(train[row.index]["answers"] for row in rows if row.template == "answer")
    # rows rotate over the templates; an unanswerable example whose turn is `answer` gets `topic` instead
    assert sum(row.template == "topic" for row in rows) > len(rows) // 2


def load_split_rows(task, data):
    from pipeline.tasks.splits import load_split

    return load_split(task, "train", data.cache_path(), data.split_seed)


def test_the_training_feed_gives_a_dropped_draw_a_stand_in(tmp_path):
    from pipeline.config import DataConfig
    from pipeline.mixing.sampler import Draw
    from pipeline.train.feed import TrainingFeed

    task = load_task(_local_task(tmp_path))
    feed = TrainingFeed({task.name: task}, [task.name], None, DataConfig(cache_dir=str(tmp_path / "cache")), seed=0)
    train = load_split_rows(task, feed.data)
    empty = next(i for i in range(len(train)) if not train[i]["answers"])
    draws = [Draw(task.name, empty, "answer", False, False, False), Draw(task.name, empty, "topic", False, False, False)]
    stand_in, topic = feed.render(draws)
    assert stand_in == topic and stand_in.template == "topic" and feed.dropped == 1
    assert feed.render(draws) == [stand_in, topic]  # a pure function of the draw


def test_each_template_is_scored_by_its_own_metrics(tmp_path):
    from pipeline.evaluate.evaluator import Evaluator
    from pipeline.tasks.rendering import RenderedExample

    task = load_task(_local_task(tmp_path))
    assert set(task.metrics) == {"exact_match", "accuracy"}
    evaluator = Evaluator.__new__(Evaluator)
    evaluator.tasks = {task.name: task}
    answer = RenderedExample(task.name, "answer", 1, "Q1?", "A1")
    topic = RenderedExample(task.name, "topic", 2, "Q2? Topic?", "t")
    assert [evaluator.scored_by(task.name, row, "exact_match") for row in (answer, topic)] == [True, False]
    assert [evaluator.scored_by(task.name, row, "accuracy") for row in (answer, topic)] == [False, True]


def test_promptsource_highlight_filter(tmp_path):
    task = one(tmp_path, "{{ a | highlight }} ||| {{ b }}")
    assert task.templates["t"].variables == {"a", "b"}
    assert render(task, "t", {"a": "A", "b": "B"}).input == "<span style='color: #F08080'>A</span>"
