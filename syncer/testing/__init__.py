"""The connector test kit: a standard suite, a fake-vendor base class and the fixtures.

A connector's tests need a fake of its vendor (``FakeVendor``) and a few lines::

    from syncer.testing import ConnectorSuite

    class TestAcme(ConnectorSuite):
        connector = AcmeConnector
        destination = {"api_key": "${ACME_API_KEY}", "base_url": FakeAcme.base_url}
        secrets = {"ACME_API_KEY": "acme-test-key-123"}

        def make_fake(self) -> FakeAcme:
            return FakeAcme()

Fixtures for your own tests: ``pytest_plugins = ["syncer.testing.fixtures"]`` in conftest.py.
Needs the ``testing`` extra (pytest, respx). See docs/testing-a-connector.md.
"""

import pytest

# The suite's asserts show their operands on failure, as a test module's do.
pytest.register_assert_rewrite("syncer.testing.suite")

from syncer.testing.fake import FakeVendor, Feature, Fields  # noqa: E402
from syncer.testing.harness import (  # noqa: E402
    ROOT_VARIABLE,
    SEGMENT_COLUMNS,
    FakeClock,
    Row,
    SyncHarness,
    engine_client,
    mapping_yaml,
)
from syncer.testing.suite import EXIT_CONFIG, ConnectorSuite, member, sha256_email  # noqa: E402

__all__ = [
    "EXIT_CONFIG",
    "ROOT_VARIABLE",
    "SEGMENT_COLUMNS",
    "ConnectorSuite",
    "FakeClock",
    "FakeVendor",
    "Feature",
    "Fields",
    "Row",
    "SyncHarness",
    "engine_client",
    "mapping_yaml",
    "member",
    "sha256_email",
]
