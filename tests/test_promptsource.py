"""promptsource import: the two unchanged promptsource files, plus format cases written from the format itself."""

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.importers.promptsource import import_promptsource, snake_case
from pipeline.importers.promptsource_jinja import split_promptsource_jinja
from pipeline.tasks.rendering import render_example
from pipeline.tasks.task import load_task
from pipeline.tasks.templates import SEPARATOR

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


def render(task, template_name: str, example: dict, index: int = 0):
    return render_example(task, task.templates[template_name], example, index=index, seed=0)


# --- the two promptsource files -----------------------------------------------------------------------


def test_amazon_polarity_imports_loads_and_renders(tmp_path):
    folder = import_promptsource(AMAZON, tmp_path / "templates")
    assert folder == tmp_path / "templates" / "amazon_polarity"
    task = load_task(folder)
    assert task.source == {"path": "amazon_polarity"}
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
    satisfied = render(task, "user_satisfied", example).input
    assert satisfied.startswith("Here is a review left by a customer on a product. Would you say he was satisfied or")

    template = task.templates["user_recommend_this_product"]
    assert template.answer_choices == "No ||| Yes"
    assert template.metadata["name"] == "User_recommend_this_product"
    assert template.metadata["id"] == "3a48f287-6a4b-4df0-ab2d-2eaf6cb8e53d"
    assert template.metadata["reference"].startswith("Reformulation equivalent to sent analysis")
    assert template.metadata["metrics"] == ["Accuracy"] and template.metadata["languages"] == ["en"]
    assert template.metadata["original_task"] is True and template.metadata["choices_in_prompt"] is False


def test_samsum_imports_loads_and_renders(tmp_path):
    task = load_task(import_promptsource(SAMSUM, tmp_path))
    assert task.source == {"path": "samsum"} and task.metrics == ("rouge",)
    assert sorted(task.templates) == [
        "generate_a_summary_for_this_dialogue",
        "given_the_above_dialogue_write_a_summary",
        "sum_up_the_following_dialogue",
        "summarize",
        "summarize_this_dialogue",
        "to_sum_up_this_dialog",
        "write_a_dialogue_that_match_this_summary",
    ]
    example = {"dialogue": DIALOGUE, "summary": "Amanda baked cookies and will share with Jerry."}
    summarize = render(task, "summarize", example)  # promptsource: 'Summarize: {{dialogue}}|||\n{{summary}}'
    assert (summarize.input, summarize.target) == (f"Summarize: {DIALOGUE}", example["summary"])
    assert render(task, "to_sum_up_this_dialog", example).input == f"{DIALOGUE}\nTo sum up this dialog:"
    assert render(task, "summarize_this_dialogue", example).choices == ()
    inverse = task.templates["write_a_dialogue_that_match_this_summary"]
    assert inverse.metadata["original_task"] is False and inverse.metadata["name"] == (
        "Write a dialogue that match this summary"
    )
    assert render(task, "write_a_dialogue_that_match_this_summary", example).target == DIALOGUE
    assert task.templates["summarize_this_dialogue"].metadata["name"] == "Summarize this dialogue:"


def test_cli_prints_the_task_folder(tmp_path, capsys):
    main(["import-promptsource", str(SAMSUM), "--out", str(tmp_path), "--task", "dialogue_summaries"])
    assert str(tmp_path / "dialogue_summaries") in capsys.readouterr().out
    assert load_task(tmp_path / "dialogue_summaries").source == {"path": "samsum"}


# --- the format -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "jinja",
    ["Q: {{ q }}|||{{ a }}", "Q: {{ q }} ||| {{ a }}", "Q: {{ q }}|||\n{{ a }}", "Q: {{ q }}\n|||{{ a }}"],
)
def test_inline_separator_goes_on_its_own_line(tmp_path, jinja):
    folder = import_promptsource(promptsource_file(tmp_path, {"name": "Ask", "jinja": jinja}), tmp_path / "out")
    text = (folder / "ask.jinja").read_text()
    assert text.endswith("Q: {{ q }}\n|||\n{{ a }}\n")
    rendered = render(load_task(folder), "ask", {"q": "2+2?", "a": "4"})
    assert (rendered.input, rendered.target) == ("Q: 2+2?", "4")


def test_answer_choices_as_a_jinja_expression(tmp_path):
    path = promptsource_file(tmp_path, {
        "name": "Pick a color",
        "answer_choices": '{{ colors | join(" ||| ") }}',
        "jinja": '{{ question }} Options: {{ answer_choices | join(", ") }}|||{{ answer_choices[label] }}',
    })
    task = load_task(import_promptsource(path, tmp_path / "out"))
    assert task.templates["pick_a_color"].answer_choices == '{{ colors | join(" ||| ") }}'
    assert task.metrics == ("accuracy", "rank_classification")
    rendered = render(task, "pick_a_color", {"question": "Sky?", "colors": ["red", "blue"], "label": 1})
    assert (rendered.input, rendered.target, rendered.choices) == ("Sky? Options: red, blue", "blue", ("red", "blue"))


def test_separator_inside_a_tag_is_not_the_split():
    source = '{{ choices | join(" ||| ") }} {# a ||| b #}\nWhich? ||| {{ answer }}'
    assert split_promptsource_jinja(source, "t") == ('{{ choices | join(" ||| ") }} {# a ||| b #}\nWhich?',
                                                     "{{ answer }}")
    assert split_promptsource_jinja('{{ {"a": "|||"}["a"] }} x ||| y', "t") == ('{{ {"a": "|||"}["a"] }} x', "y")


@pytest.mark.parametrize(("jinja", "found"), [("A ||| B ||| C", 2), ("no separator here", 0)])
def test_not_exactly_one_separator_is_refused_naming_the_template(tmp_path, jinja, found):
    path = promptsource_file(tmp_path, {"name": "Fine", "jinja": "{{ x }} ||| {{ y }}"}, {"name": "Bad one", "jinja": jinja})
    with pytest.raises(UserError, match=rf"templates.yaml: template 'Bad one': expected exactly one '\|\|\|'.*found {found}"):
        import_promptsource(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_python_tags_are_refused_without_building_anything(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "templates.yaml"
    path.write_text(f"dataset: demo\nsubset: !!python/object/apply:os.system ['touch {marker}']\ntemplates: {{}}\n")
    with pytest.raises(UserError, match=r"templates.yaml: line 2: refused: .*python/object/apply:os.system"):
        import_promptsource(path, tmp_path / "out")
    assert not marker.exists()
    path.write_text("dataset: demo\ntemplates:\n  x: !!python/object:pipeline.tasks.templates.Template {name: x}\n")
    with pytest.raises(UserError, match=r"templates.yaml: line 3: refused: .*python/object:pipeline"):
        import_promptsource(path, tmp_path / "out")


def test_template_tag_must_tag_a_mapping(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text("dataset: demo\ntemplates:\n  x: !Template just a string\n")
    with pytest.raises(UserError, match=r"templates.yaml: line 3: refused: !Template must tag a mapping"):
        import_promptsource(path, tmp_path / "out")


def test_duplicate_names_get_unique_slugs(tmp_path):
    names = ["Summarize:", "Summarize", "summarize!", "…Task", "什么"]
    path = promptsource_file(tmp_path, *({"name": n, "jinja": f"{n} {{{{ x }}}} ||| {{{{ y }}}}"} for n in names))
    task = load_task(import_promptsource(path, tmp_path / "out"))
    slugs = ["summarize", "summarize_2", "summarize_3", "task_2", "template"]  # 'task' is kept for task.yaml's stem
    assert sorted(task.templates) == sorted(slugs)
    assert [task.templates[s].metadata["name"] for s in slugs] == names
    assert snake_case("Zaid/coqa_expanded") == "zaid_coqa_expanded"


def test_missing_dataset_key_is_an_error(tmp_path):
    path = promptsource_file(tmp_path, {"name": "A", "jinja": "a ||| b"}, top="subset: rte\n")
    with pytest.raises(UserError, match=r"templates.yaml: missing the top-level 'dataset:' key"):
        import_promptsource(path, tmp_path / "out")


def test_task_name_from_dataset_and_subset(tmp_path):
    path = promptsource_file(tmp_path, {"name": "A", "jinja": "{{ x }} ||| {{ y }}"},
                             top="dataset: Zaid/coqa_expanded\nsubset: v1.0\n")
    folder = import_promptsource(path, tmp_path / "out")
    assert folder.name == "zaid_coqa_expanded_v1_0"
    assert load_task(folder).source == {"path": "Zaid/coqa_expanded", "name": "v1.0"}
    assert import_promptsource(path, tmp_path / "out", task_name="coqa").name == "coqa"
    with pytest.raises(UserError, match=r"--task '../coqa' is not a task folder name"):
        import_promptsource(path, tmp_path / "out", task_name="../coqa")


def test_existing_folder_is_kept_unless_forced(tmp_path):
    path = promptsource_file(tmp_path, {"name": "First", "jinja": "{{ x }} ||| {{ y }}"})
    out = tmp_path / "out"
    folder = import_promptsource(path, out)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"out/demo: task folder already exists; pass --force"):
        import_promptsource(path, out)
    assert (folder / "notes.txt").exists()
    path = promptsource_file(tmp_path, {"name": "Second", "jinja": "{{ x }} ||| {{ y }}"})
    assert import_promptsource(path, out, force=True) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["second.jinja", "task.yaml"]
    assert [p.name for p in out.iterdir()] == ["demo"]


def test_metrics_mapping_and_skipped_names(tmp_path):
    path = promptsource_file(
        tmp_path,
        {"name": "A", "jinja": "{{ x }} ||| {{ y }}", "metadata": {"metrics": ["Squad", "Other"]}},
        {"name": "B", "jinja": "{{ x }} ||| {{ y }}", "metadata": {"metrics": ["BLEU", "Pearson Correlation"]}},
        {"name": "C", "jinja": "{{ x }} ||| {{ y }}", "metadata": {"metrics": None}},
    )
    task = load_task(import_promptsource(path, tmp_path / "out"))
    assert task.metrics == ("exact_match", "bleu")
    assert "(skipped): Other, Pearson Correlation" in task.yaml_text


def test_if_block_around_the_separator_is_closed_and_reopened(tmp_path):
    jinja = '{% if question == "effect" %}\n{{ premise }} What happened next? ||| {{ [choice1, choice2][label] }}\n{% endif %}'
    path = promptsource_file(tmp_path, {"name": "Next", "jinja": jinja})
    task = load_task(import_promptsource(path, tmp_path / "out"))
    example = {"premise": "It rained.", "choice1": "Floods.", "choice2": "Drought.", "label": 0, "question": "effect"}
    assert (render(task, "next", example).input, render(task, "next", example).target) == (
        "It rained. What happened next?", "Floods.")
    skipped = render(task, "next", {**example, "question": "cause"})  # promptsource renders nothing for these
    assert (skipped.input, skipped.target) == ("", "")


def test_variables_set_before_the_separator_are_replayed_in_the_target(tmp_path):
    jinja = "{% set options = [a, b] %}{% set right = options[label] %}Pick: {{ options | join(' or ') }}|||{{ right }}"
    path = promptsource_file(tmp_path, {"name": "Pick", "jinja": jinja})
    task = load_task(import_promptsource(path, tmp_path / "out"))
    rendered = render(task, "pick", {"a": "cat", "b": "dog", "label": 1})
    assert (rendered.input, rendered.target) == ("Pick: cat or dog", "dog")


def test_random_variable_read_on_both_sides_is_refused(tmp_path):
    jinja = '{% set guess = ["A", "B"] | choice %}Is it {{ guess }}? ||| {{ "Yes" if guess == answer else "No" }}'
    path = promptsource_file(tmp_path, {"name": "Guess", "jinja": jinja})
    with pytest.raises(UserError, match=r"template 'Guess': the target reads guess, set before '\|\|\|', .*'choice'"):
        import_promptsource(path, tmp_path / "out")


def test_separator_inside_a_for_loop_is_refused(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Loop", "jinja": "{% for x in xs %}{{ x }} ||| {{ x }}{% endfor %}"})
    with pytest.raises(UserError, match=r"template 'Loop': '\|\|\|' sits inside a \{% for %\} block"):
        import_promptsource(path, tmp_path / "out")


def test_choice_filter_is_seeded_per_example(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Any", "jinja": '{{ ["x", "y", "z", "w"] | choice }} {{ q }} ||| {{ a }}'})
    task = load_task(import_promptsource(path, tmp_path / "out"))
    draws = [render(task, "any", {"q": "?", "a": "!"}, index=i).input for i in range(20)]
    assert draws == [render(task, "any", {"q": "?", "a": "!"}, index=i).input for i in range(20)]
    assert len(set(draws)) > 1 and all(d[0] in "xyzw" for d in draws)


@pytest.mark.parametrize(
    ("jinja", "helper"),
    [("{{ x | frobnicate }} ||| y", "the filter 'frobnicate'"), ("{{ frobnicate(x) }} ||| y", "the function 'frobnicate()'"),
     ("{% if x is frobnicated %}a{% endif %} ||| y", "the test 'frobnicated'")],
)
def test_helpers_our_environment_lacks_are_refused_at_import(tmp_path, jinja, helper):
    path = promptsource_file(tmp_path, {"name": "Odd", "jinja": jinja})
    with pytest.raises(UserError, match=rf"template 'Odd': uses {re.escape(helper)}, which flanpipe's template environment"):
        import_promptsource(path, tmp_path / "out")


def test_bad_jinja_and_sandbox_escapes_are_refused(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Broken", "jinja": "{{ x ||| y"})
    with pytest.raises(UserError, match=r"template 'Broken': Jinja syntax error at line 1"):
        import_promptsource(path, tmp_path / "out")
    path = promptsource_file(tmp_path, {"name": "Escape", "jinja": "{{ x.__class__ }} ||| y"})
    with pytest.raises(UserError, match=r"template 'Escape': refused: .*'__class__'"):
        import_promptsource(path, tmp_path / "out")


def test_written_files_round_trip_and_keep_the_separator_line(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Has ||| in: name", "jinja": "{{ x }} ||| {{ y }}",
                                        "reference": "Perez et al. 2021"})
    task = load_task(import_promptsource(path, tmp_path / "out"))
    (template,) = task.templates.values()
    assert template.name == "has_in_name" and template.metadata["name"] == "Has ||| in: name"
    assert template.metadata["reference"] == "Perez et al. 2021"
    assert (template.input_source, template.target_source) == ("{{ x }}", "{{ y }}")
    assert f"\n{SEPARATOR}\n" in (tmp_path / "out" / "demo" / "has_in_name.jinja").read_text()


def test_what_cannot_round_trip_is_refused(tmp_path):
    path = promptsource_file(tmp_path, {"name": "Closes #} the comment", "jinja": "{{ x }} ||| {{ y }}"})
    with pytest.raises(UserError, match=r"template 'Closes #} the comment': does not survive conversion"):
        import_promptsource(path, tmp_path / "out")


def test_older_promptsource_fields_are_accepted(tmp_path):
    """Older promptsource files: answer_choices as a YAML list, extra keys (answer_choices_key, _do_eval, metric)."""
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
    task = load_task(import_promptsource(path, tmp_path / "out"))
    assert task.name == "race_high" and task.source == {"path": "race", "name": "high"}
    assert task.metrics == ("rank_classification",)
    template = task.templates["taking_a_test"]
    assert template.answer_choices == ["A", "B"] and template.metadata["_do_eval"] is True
    # race's `options` column would be hidden by the renderer's own `options`: it is renamed on load.
    assert task.fields == {"dataset_options": "options"}
    assert template.input_source == "Article: {{article}}\nOptions: A: {{dataset_options.0}} B: {{dataset_options.1}}"
    rendered = render(task, "taking_a_test", {"article": "Text.", "dataset_options": ["x", "y"], "answer": "B"})
    assert (rendered.input, rendered.target) == ("Article: Text.\nOptions: A: x B: y", "B")


def test_a_failed_write_leaves_the_old_folder_and_no_scratch(tmp_path, monkeypatch):
    from pipeline.importers import promptsource

    path = promptsource_file(tmp_path, {"name": "First", "jinja": "{{ x }} ||| {{ y }}"})
    folder = import_promptsource(path, tmp_path / "out")

    def refuse(folder):
        raise UserError("simulated failure")

    monkeypatch.setattr(promptsource, "load_task", refuse)
    with pytest.raises(UserError, match="simulated failure"):
        import_promptsource(promptsource_file(tmp_path, {"name": "Second", "jinja": "a ||| b"}), tmp_path / "out",
                            force=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["demo"]
    assert sorted(p.name for p in folder.iterdir()) == ["first.jinja", "task.yaml"]


def test_the_options_field_is_renamed_in_answer_choices_and_tags_only():
    from pipeline.importers.promptsource import _rename_fields

    source = '{% for o in options %}{{ x.options }} options "options" {{ "options" ~ o }}{% endfor %}'
    assert _rename_fields(source, "t") == (
        '{% for o in dataset_options %}{{ x.options }} options "options" {{ "options" ~ o }}{% endfor %}'
    )
    assert _rename_fields('{{ options | join(" ||| ") }}', "t") == '{{ dataset_options | join(" ||| ") }}'
    assert _rename_fields("{% set options = [1] %}{{ options }}", "t") == "{% set options = [1] %}{{ options }}"


def test_promptsource_helpers_zip_and_most_frequent(tmp_path):
    """promptsource's `zip` global and `most_frequent` filter are provided by our environment."""
    jinja = "{% for q, a in zip(questions, answers) %}{{ q }}={{ a }} {% endfor %}||| {{ votes | most_frequent | first }}"
    task = load_task(import_promptsource(promptsource_file(tmp_path, {"name": "Pairs", "jinja": jinja}), tmp_path / "o"))
    rendered = render(task, "pairs", {"questions": ["a", "b"], "answers": [1, 2], "votes": ["x", "y", "y"]})
    assert (rendered.input, rendered.target) == ("a=1 b=2", "y")
