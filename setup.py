"""Build hook: the shipped task folders, mixtures and presets travel inside the wheel as `pipeline/shipped/`.

They live at the top of the checkout (`templates/`, `task_mixtures/`, `configs/`), where users and the Makefile
find them. A wheel carries a copy under `pipeline/shipped/`, and `pipeline.config.shipped_path` reads that copy
with `importlib.resources`; an editable install (and a plain checkout) reads the checkout's own folders.
Everything else about the package is declared in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("templates", "task_mixtures", "configs")


class BuildWithShippedFolders(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            target = Path(self.build_lib) / "pipeline" / "shipped" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithShippedFolders})
