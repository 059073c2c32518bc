"""/metrics says which dkserver release is running."""

from __future__ import annotations

import re

import pytest_twisted

import dkserver
from tests.support.metrics import sample, scrape


@pytest_twisted.ensureDeferred
async def test_metrics_carry_build_info_with_the_package_version(server):
    text = await scrape(server)
    assert sample(text, "dkserver_build_info", version=dkserver.__version__) == 1.0
    assert re.search(
        r'^dkserver_build_info\{version="%s"\} 1\.0$' % re.escape(dkserver.__version__),
        text,
        re.MULTILINE,
    ), text
    assert "# TYPE dkserver_build_info gauge" in text
