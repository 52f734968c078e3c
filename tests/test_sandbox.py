"""The template sandbox, attacked: escapes (no file read, no command run, no object leaked) and resource bombs
(each refused in seconds, naming the template, with memory bounded). Templates are other people's code."""

import resource
import time

import pytest

from pipeline.errors import UserError
from pipeline.tasks.templates import parse_template

# Classic server-side template injection payloads: introspection, Jinja's globals, loaders, builtins, mutation.
ESCAPES = {
    "class via attribute": "{{ text.__class__ }}",
    "class via subscript": "{{ text['__class__'] }}",
    "subclasses": "{{ ().__class__.__base__.__subclasses__() }}",
    "attribute name built at run time": "{{ text | attr('__cl' ~ 'ass__') }}",
    "lipsum globals": "{{ lipsum.__globals__ }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os }}",
    "joiner globals": "{{ joiner.__init__.__globals__ }}",
    "namespace globals": "{{ namespace.__init__.__globals__ }}",
    "range self": "{{ range.__self__ }}",
    "template context": "{{ self._TemplateReference__context }}",
    "template reference": "{{ self }}",
    "format attribute": "{{ '{0.__class__}'.format(text) }}",
    "format_map attribute": "{{ '{x.__class__}'.format_map({'x': text}) }}",
    "percent format": "{{ '%s' % text.__class__ }}",
    "bound method self": "{{ text.upper.__self__ }}",
    "builtin method self": "{{ ''.join.__self__ }}",
    "function of a method": "{{ text.split.__func__ }}",
    "int class": "{{ (1).real.__class__ }}",
    "loop internals": "{% for x in [1] %}{{ loop.__class__ }}{% endfor %}",
    "dict init": "{{ {}.__class__.__init__ }}",
    "mro": "{{ text.mro }}",
    "import": "{% import 'os' as os %}{{ os }}",
    "include a file": "{% include '/etc/passwd' %}",
    "extends a file": "{% extends '/etc/passwd' %}",
    "from import": "{% from 'os' import system %}{{ system('id') }}",
    "open": "{{ open('/etc/passwd').read() }}",
    "eval": "{{ eval('1 + 1') }}",
    "getattr": "{{ getattr(text, '__class__') }}",
    "config global": "{{ config }}",
    "list mutation": "{% set l = [1] %}{{ l.append(2) }}{{ l }}",
    "dict mutation": "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "debug tag": "{% debug %}",
    "generator frame": "{{ (x for x in [1]).gi_frame }}",
}


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_sandbox_escape_is_refused_naming_the_template(escape):
    with pytest.raises(UserError, match=r"templates/t/escape.jinja: "):
        template = parse_template(ESCAPES[escape] + "\n|||\nx", name="escape", path="templates/t/escape.jinja")
        template.render({"text": "hello"}, rng_key="k")


def test_an_attribute_read_through_map_leaks_nothing():
    template = parse_template("{{ [text] | map(attribute='__class__') | list }}\n|||\nx", name="t")
    rendered, _ = template.render({"text": "hello"}, rng_key="k")
    assert "class" not in rendered and "str" not in rendered  # the sandbox answers Undefined


# Resource bombs: each refused in seconds, naming the template, with memory bounded.
BOMBS = {
    "huge repetition": "{{ 'a' * 10**9 }}\n|||\nx",
    "huge list": "{{ ([1] * 100000000) | length }}\n|||\nx",
    "huge power": "{{ 10**100000000 }}\n|||\nx",
    "huge width (method)": "{{ text.center(10**9) }}\n|||\nx",
    "huge width (filter)": "{{ text | center(1000000000) }}\n|||\nx",
    "huge indent": "{{ text | indent(1000000000, true) }}\n|||\nx",
    "huge % width": "{{ '%1000000000s' % text }}\n|||\nx",
    "huge format width": "{{ '{:1000000000}'.format(text) }}\n|||\nx",
    "doubling joins": "{% set s = namespace(v='ab') %}{% for i in range(40) %}{% set s.v = s.v + s.v %}{% endfor %}"
                      "{{ s.v | length }}\n|||\nx",
    "doubling macro": "{% macro d(n) %}{% if n %}{{ d(n - 1) }}{{ d(n - 1) }}{% else %}xy{% endif %}{% endmacro %}"
                      "{{ d(40) | length }}\n|||\nx",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n|||\nx",
    "answer choices bomb": "{# answer_choices: \"{{ 'a' * 10**9 }} ||| b\" #}\n{{ text }}\n|||\nb",
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_resource_bomb_is_refused_quickly_naming_the_template(bomb):
    template = parse_template(BOMBS[bomb], name="bomb", path="templates/t/bomb.jinja")
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError, match=r"templates/t/bomb.jinja: .*refused"):
        template.render({"text": "hello"}, rng_key="k")
        template.render_choices({"text": "hello"}, rng_key="k")
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: well under 1 GB


def test_the_limits_leave_ordinary_templates_alone():
    template = parse_template("{{ text * 3 }} {{ 2 ** 64 }} {{ text.center(20) }} {{ '%5s' % 'x' }}\n|||\n{{ text }}",
                              name="fine")
    expected = f"ababab {2 ** 64} {'ab'.center(20)} {'%5s' % 'x'}"  # noqa: UP031 (the template's own % format)
    assert template.render({"text": "ab"}, rng_key="k")[0] == expected


PROMPTSOURCE_ALLOWED = {"list mutation", "dict mutation"}  # promptsource's idiom: templates build their own lists


@pytest.mark.parametrize("escape", sorted(set(ESCAPES) - PROMPTSOURCE_ALLOWED))
def test_a_sandbox_escape_is_refused_in_promptsource_style_too(escape):
    """promptsource's environment renders a missing name as '' instead of failing; an escape still gets nothing:
    refused naming the template, or rendered as nothing at all."""
    from pipeline.tasks.templates import Dropped

    try:
        template = parse_template(ESCAPES[escape] + " ||| x", name="escape", path="templates/t/escape.jinja",
                                  style="promptsource")
        template.render({"text": "hello"}, rng_key="k")
    except UserError as error:
        assert "templates/t/escape.jinja: " in str(error)
    except Dropped as dropped:  # `{{ config }}` & co.: undefined, so an empty input
        assert str(dropped) == "renders an empty input"
    else:
        pytest.fail("rendered")


def test_promptsource_style_mutates_only_its_own_copies():
    template = parse_template("{% set _ = items.append('z') %}{% set l = [1] %}{{ l.append(2) or l }} {{ items }} ||| x",
                              name="t", style="promptsource")
    items = ["a"]
    assert template.render({"items": items}, rng_key="k")[0] == "[1, 2] ['a', 'z']" and items == ["a"]
