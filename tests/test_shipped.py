"""Every shipped task folder, template and mixture file passes lint: against the real built-in data where it
has been fetched (`make test` runs `make data` first), structurally where it has not."""

import pytest

from pipeline.config import SHIPPED_MIXTURES, SHIPPED_TEMPLATES, load_config
from pipeline.lint import lint_paths
from pipeline.mixing.tree import RegistryStats, check_mixture_file, load_mixture
from pipeline.tasks.task import load_tasks

TASKS = load_tasks(SHIPPED_TEMPLATES)
MIXTURES = sorted(p for p in SHIPPED_MIXTURES.rglob("*.yaml"))
CACHE = load_config().data.cache_path()  # read at import: other tests point FLANPIPE_CACHE at temporary folders


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_task_lints_clean(name):
    problems, checked = lint_paths([SHIPPED_TEMPLATES / name], load_config(None, [f"data.cache_dir={CACHE}"]).data)
    assert problems == [] and checked >= 1 + len(TASKS[name].templates)


PRETRAINING = sorted(name for name, task in TASKS.items() if any(step == "span_corruption" for step, _ in task.preprocess))


@pytest.mark.parametrize("name", sorted(set(TASKS) - set(PRETRAINING)))
def test_builtin_task_has_three_phrasings_metrics_and_a_license(name):
    task = TASKS[name]
    assert len(task.forward_templates) >= 3 and task.metrics and task.license


@pytest.mark.parametrize("name", PRETRAINING)
def test_pretraining_task_is_t5s_plain_format_scored_by_its_loss(name):
    """T5's objective has no instruction to phrase: one template passing the corrupted text through."""
    task = TASKS[name]
    (template,) = task.templates.values()
    assert template.variables == {"inputs", "targets"} and not task.metrics and task.license


@pytest.mark.parametrize("path", MIXTURES, ids=lambda p: str(p.relative_to(SHIPPED_MIXTURES)))
def test_shipped_mixture_is_valid(path):
    mixture = check_mixture_file(path, SHIPPED_MIXTURES)
    assert mixture.leaves and abs(sum(mixture.shares.values()) - 1) < 1e-9


def test_default_mixture_resolves_against_the_builtin_suite():
    if not all(task.available(CACHE)[0] for task in TASKS.values()):
        pytest.skip(f"built-in data not fetched in {CACHE} (run `make data`)")
    mixture = load_mixture("default", RegistryStats(TASKS, CACHE), SHIPPED_MIXTURES)
    assert len(mixture.shares) >= 8 and mixture.held_out
    assert all(leaf.n >= 500 for leaf in mixture.leaves)
