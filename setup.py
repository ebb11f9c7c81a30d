"""Package layout (the metadata is in pyproject.toml).

The wheel holds `latentsync` and, inside it, two folders of the checkout under other names:
`scripts/` as `latentsync.cli` (the console scripts' targets) and `configs/` as
`latentsync.configs` (the YAML configs the code loads at run time; see latentsync/paths.py).
`gradio_app.py` ships as a top-level module for the `latentsync-app` command. Sub-packages are found
with or without an `__init__.py`.
"""

from setuptools import find_namespace_packages, setup

PACKAGES = find_namespace_packages(include=["latentsync", "latentsync.*"], exclude=["*__pycache__*"])

setup(
    packages=PACKAGES + ["latentsync.cli", "latentsync.configs"],
    package_dir={"latentsync.cli": "scripts", "latentsync.configs": "configs"},
    py_modules=["gradio_app"],
)
