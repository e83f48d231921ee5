"""The code every kernel executes into its module ``__casare__`` (checkpoints and restore),
as files of this package run in order into that one module: ``kernel_chunks.py`` (chunked
large objects), then ``kernel_side.py`` (snapshots, the hook, restore). The kernel needs
nothing of casare_nb: the sources are read here and executed there."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = ["KERNEL_SIDE_FILES", "kernel_side_files", "kernel_side_module", "kernel_side_sources"]

KERNEL_SIDE_FILES: Final = ("kernel_chunks.py", "kernel_side.py")
"""The kernel-side files, in the order they are executed."""


def kernel_side_sources() -> list[str]:
    """The kernel-side files' sources, in order."""
    here = resources.files("casare_nb.notebook")
    return [here.joinpath(name).read_text("utf-8") for name in KERNEL_SIDE_FILES]


def kernel_side_files() -> list[str] | None:
    """The kernel-side files' paths, in order, when the package is installed as files."""
    here = resources.files("casare_nb.notebook")
    paths = [Path(str(here.joinpath(name))) for name in KERNEL_SIDE_FILES]
    return [str(path) for path in paths] if all(path.is_file() for path in paths) else None


def kernel_side_module(name: str = "__casare__") -> ModuleType:
    """A module of the kernel-side code, executed as a kernel executes it (not registered in
    ``sys.modules``): for the zygote, and for measuring it in a process of its own."""
    module = ModuleType(name)
    for source in kernel_side_sources():
        exec(compile(source, "<casare>", "exec"), module.__dict__)
    return module
