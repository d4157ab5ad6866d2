"""A tiny stand-in for syncer.lift_html (helper A's page), used by the tests only while it is
not merged yet: the same ``render(report) -> str`` as DESIGN16.md, self-contained."""

from __future__ import annotations

import html
import json
from typing import Any


def render(report: dict[str, Any]) -> str:
    body = html.escape(json.dumps(report)[:2000])
    return (
        f"<!doctype html><html><head><title>{html.escape(report['sync'])} lift</title></head>"
        f"<body><svg></svg><pre>{body}</pre></body></html>"
    )
