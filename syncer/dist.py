"""The name syncer is installed under, and how to ask for one of its optional parts.

The import package and the command are ``syncer``; on the package index ``syncer`` is an
unrelated project, so the distribution (what ``pip install`` and a plugin's dependency name)
is ``syncer-activation``.
"""

from __future__ import annotations

from sqlalchemy import URL

from syncer.errors import ConfigError

#: The distribution name: ``pip install syncer-activation``; plugins depend on it.
DISTRIBUTION = "syncer-activation"


def install_command(extra: str | None = None) -> str:
    """The pip command that installs syncer, or syncer with ``extra`` (quoted for a shell)."""
    if extra is None:
        return f"pip install {DISTRIBUTION}"
    return f"pip install '{DISTRIBUTION}[{extra}]'"


#: Backend -> (what the user knows it as, the extra that installs its driver, the driver
#: that extra provides). SQLite is built into Python and needs none.
_DRIVER_EXTRAS = {
    "duckdb": ("DuckDB", "duckdb", None),
    "postgresql": ("PostgreSQL", "postgres", "psycopg"),
}


def missing_driver(url: URL, exc: BaseException, what: str) -> ConfigError:
    """The configuration error for a URL whose SQLAlchemy dialect or driver cannot be imported.

    It names the extra that installs the driver (``pip install 'syncer-activation[duckdb]'``),
    so the fix is one command. ``what`` says whose URL it is ("warehouse URL", "SYNCER_STATE_URL").
    Nothing of the URL but its scheme is quoted: it may hold a password.
    """
    scheme = url.drivername
    # Not url.get_driver_name(): without a "+driver" it loads the dialect, which just failed.
    backend, _, driver = scheme.partition("+")
    module = exc.name if isinstance(exc, ImportError) and exc.name else None
    missing = f" (no module named {module!r})" if module else ""
    known = _DRIVER_EXTRAS.get(backend)
    if known is None:
        return ConfigError(
            f"{what} {scheme}:// has no SQLAlchemy dialect or driver installed{missing};"
            " syncer ships drivers for SQLite (built in), DuckDB and PostgreSQL"
        )
    label, extra, supported = known
    wanted = driver or (module or "").partition(".")[0]
    if supported is not None and wanted not in ("", supported):
        return ConfigError(
            f"{what} {scheme}:// needs the {label} driver {wanted!r}, which is not installed"
            f"{missing}; syncer reads {label} through {supported}: write the URL as"
            f" {backend}+{supported}:// and install it with: {install_command(extra)}"
        )
    return ConfigError(
        f"{what} {scheme}:// needs the {label} driver, which is not installed{missing};"
        f" install it with: {install_command(extra)}"
    )
