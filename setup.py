"""snf-watcher: keep a Synnefo cloud's database in step with its Ganeti clusters."""

import re
from pathlib import Path

from setuptools import setup

version = re.search(r'__version__ = "([^"]+)"', Path("snf_watcher/__init__.py").read_text()).group(1)

setup(
    name="snf-watcher",
    version=version,
    description="Ganeti-side event pipeline and cron watcher for Synnefo (Cyclades)",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.11",
    packages=["snf_watcher", "ganeti_hooks"],
    install_requires=[
        "pyinotify>=0.9.6",
        "pyasyncore; python_version >= '3.12'",  # pyinotify imports asyncore, gone in 3.12
        "PyYAML>=6.0",
        "requests>=2.28",  # Debian 12's python3-requests is 2.28
        "psycopg2>=2.8",  # built from source (libpq-dev); Debian's python3-psycopg2 in the package
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "ruff"],
    },
    entry_points={
        "console_scripts": [
            "snf-ganeti-eventd = ganeti_hooks.eventd:main",
            "snf-ganeti-hook = ganeti_hooks.hook:main",
            "snf-progress-monitor = ganeti_hooks.progress:main",
            "snf-watcher = snf_watcher.cli:main",
        ],
    },
)
