"""``syncer new connector NAME``: a connector package of its own, ready to install and test.

The package lives outside syncer (a connector belongs to whoever writes it): a pyproject with
the ``syncer.connectors`` entry point and a dependency on syncer's distribution, a
``RestConnector`` subclass with its config model, a mapping example, and tests on the connector
kit (``syncer.testing``) against a fake of the vendor. As generated it installs and its tests
pass; the author then replaces the placeholder API with the vendor's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from syncer import __version__
from syncer.dist import DISTRIBUTION

#: A connector name: what mappings write as ``connector:`` and the entry point's name.
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")

#: Template file -> where it goes in the package ({package} and {name} filled in).
FILES = (
    ("pyproject.toml.tmpl", "pyproject.toml"),
    ("README.md.tmpl", "README.md"),
    ("init.py.tmpl", "src/{package}/__init__.py"),
    ("connector.py.tmpl", "src/{package}/connector.py"),
    ("py.typed.tmpl", "src/{package}/py.typed"),
    ("mapping.yaml.tmpl", "mappings/{name}_example.yaml"),
    ("tests_init.py.tmpl", "tests/__init__.py"),
    ("fake.py.tmpl", "tests/fake_{name}.py"),
    ("test_connector.py.tmpl", "tests/test_{name}.py"),
)

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class ScaffoldError(ValueError):
    """The name or the target directory cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Names:
    """Everything a template names, derived from the connector name."""

    name: str  # acme_crm: the entry point and `connector:` value
    package: str  # syncer_acme_crm: the import package
    dist: str  # syncer-acme-crm: the distribution
    cls: str  # AcmeCrm: prefix of the config and connector classes ({{Class}})
    title: str  # Acme Crm: for prose ({{Title}})
    env: str  # ACME_CRM: prefix of environment variables ({{NAME}})

    @classmethod
    def of(cls, name: str) -> Names:
        if not NAME.fullmatch(name):
            raise ScaffoldError(
                f"connector name {name!r}: use lower-case letters and digits, words joined by"
                " single underscores, starting with a letter (e.g. acme or acme_crm)"
            )
        words = name.split("_")
        return cls(
            name=name,
            package=f"syncer_{name}",
            dist=f"syncer-{name.replace('_', '-')}",
            cls="".join(w.capitalize() for w in words),
            title=" ".join(w.capitalize() for w in words),
            env=name.upper(),
        )

    def values(self) -> dict[str, str]:
        return {
            "name": self.name,
            "package": self.package,
            "dist": self.dist,
            "Class": self.cls,
            "Title": self.title,
            "NAME": self.env,
            "syncer_dist": DISTRIBUTION,
            "syncer_version": __version__,
        }


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with every ``{{key}}`` replaced; an unknown key is a bug in the template."""

    def one(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return _PLACEHOLDER.sub(one, template)


def default_directory(name: str) -> Path:
    """Where ``syncer new connector NAME`` writes without ``--dir``: ./syncer-NAME."""
    return Path.cwd() / Names.of(name).dist


def new_connector(name: str, directory: Path, *, taken: frozenset[str] = frozenset()) -> list[Path]:
    """Write the package for connector ``name`` into ``directory`` (absent or empty) and
    return the files written. ``taken``: connector names already installed, refused because
    two entry points of one name cannot both load."""
    names = Names.of(name)
    if name in taken:
        raise ScaffoldError(
            f"connector name {name!r} is taken by an installed connector; choose another"
        )
    if names.dist == DISTRIBUTION:
        raise ScaffoldError(
            f"connector name {name!r} would make the distribution {names.dist}, which is"
            " syncer's own; choose another"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} already exists and is not empty; choose another --dir")
    templates = files("syncer") / "templates" / "connector"
    values = names.values()
    written: list[Path] = []
    for template, target in FILES:
        path = directory / target.format(package=names.package, name=names.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(templates.joinpath(template).read_text(), values))
        written.append(path)
    return written
