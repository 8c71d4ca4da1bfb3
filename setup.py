"""Package discovery for the fixed repository layout.

The top-level folders ``cloud/ edge/ export/ proto/`` install as ``asymfuse.cloud`` and so on;
``asymfuse`` itself is a namespace package, so nothing generic lands in site-packages. All other
metadata lives in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = ("cloud", "edge", "export", "proto")

setup(
    packages=[f"asymfuse.{pkg}" for root in ROOTS for pkg in find_packages(include=[root, f"{root}.*"])],
    package_dir={f"asymfuse.{root}": root for root in ROOTS},
)
