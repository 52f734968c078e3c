import pytest

from pipeline.errors import UserError
from pipeline.tasks.templates import Template, format_template_file, load_template, parse_template


def render(text: str, example: dict, **kwargs):
    return parse_template(text, name="t", path="t.jinja").render(example, rng_key="0/task/t/0", **kwargs)


def test_split_on_separator_line_and_render():
    assert render("Q: {{ q }}\n|||\n{{ a }}\n", {"q": "why?", "a": "because"}) == ("Q: why?", "because")


def test_separator_inside_data_does_not_split():
    assert render("{{ q }}\n|||\n{{ a }}", {"q": "x ||| y", "a": "z"}) == ("x ||| y", "z")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no separator {{ x }}", r"t.jinja: expected exactly one line holding only '\|\|\|'.*found 0"),
        ("a\n|||\nb\n|||\nc", r"t.jinja: expected exactly one line.*found 2"),
        ("{{ x }\n|||\n{{ y }}", r"t.jinja: Jinja syntax error in the input at line 1"),
        ("{{ x }}\n|||\n{% if %}", r"t.jinja: Jinja syntax error in the target"),
        ("  \n|||\n{{ y }}", r"t.jinja: the input side of '\|\|\|' is empty"),
        ("{{ ''.__class__.__mro__ }}\n|||\nx", r"t.jinja: refused: the input reaches for '__\w+__'"),
        ("{{ x['__class__'] }}\n|||\nx", r"t.jinja: refused: the input reaches for '__class__'"),
        ("{# colour: red #}\n{{ x }}\n|||\ny", r"t.jinja: unknown metadata key 'colour'"),
    ],
)
def test_bad_templates_are_refused_with_the_file_named(text, message):
    with pytest.raises(UserError, match=message):
        parse_template(text, name="t", path="t.jinja")


def test_undefined_field_names_template_field_and_available_fields():
    with pytest.raises(UserError, match=r"t.jinja: 'qestion' is undefined; fields available: answer, question"):
        render("{{ qestion }}\n|||\n{{ answer }}", {"question": "q", "answer": "a"})


def test_metadata_comment_and_plain_comment():
    template = parse_template("{# inversion: true\nanswer_choices: [a, b] #}\nX\n|||\nY", name="t")
    assert template.inversion and template.answer_choices == ["a", "b"]
    plain = parse_template("{# just a note about this template #}\nX\n|||\nY", name="t")
    assert not plain.inversion and plain.answer_choices is None


def test_seeded_choice_is_reproducible_and_varies_by_key():
    template = parse_template("{{ ['a','b','c','d','e','f'] | choice }}\n|||\nx", name="t")
    first = [template.render({}, rng_key=f"0/t/t/{i}")[0] for i in range(30)]
    again = [template.render({}, rng_key=f"0/t/t/{i}")[0] for i in range(30)]
    assert first == again and len(set(first)) > 1


def test_answer_choices_from_jinja_expression():
    template = parse_template("{# answer_choices: '{{ a }} ||| {{ b }}' #}\n{{ q }}\n|||\n{{ a }}", name="t")
    assert template.render_choices({"a": "yes", "b": "no", "q": "?"}, rng_key="k") == ["yes", "no"]
    assert template.variables == {"a", "b", "q"}


def test_variables_exclude_provided_names():
    template = parse_template("{{ text }} {{ options }} {{ answer_choices | join(', ') }}\n|||\n{{ label }}", name="t")
    assert template.variables == {"text", "label"} and template.places_options


def test_format_round_trip(tmp_path):
    original = Template("t", "Q: {{ q }}", "{{ a }}", answer_choices="{{ a }} ||| b", inversion=True,
                        description="d", metadata={"id": "x1", "original_task": True})
    path = tmp_path / "t.jinja"
    path.write_text(format_template_file(original))
    loaded = load_template(path)
    for name in ("input_source", "target_source", "answer_choices", "inversion", "description", "metadata"):
        assert getattr(loaded, name) == getattr(original, name)


def test_answer_choices_that_fail_name_the_template():
    template = parse_template("{# answer_choices: \"{{ 1 // 0 }} ||| b\" #}\n{{ text }}\n|||\nb", name="t",
                              path="templates/t/t.jinja")
    with pytest.raises(UserError, match=r"templates/t/t.jinja: answer_choices: rendering failed: ZeroDivisionError"):
        template.render_choices({"text": "x"}, rng_key="k")
