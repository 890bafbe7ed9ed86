"""Importing a >= 1 GB release-layout checkpoint keeps peak RAM near the EMA weights' size (memory-mapped)."""

from __future__ import annotations

import pytest

from extras import require_export

pytestmark = require_export()  # torch: skipped on a base install


@pytest.mark.slow
def test_peak_rss_stays_under_weights_plus_30_percent(tmp_path):
    from mmgen_edge.bench.import_memory import measure

    result = measure(depth=7, workdir=tmp_path)
    assert result["checkpoint_bytes"] >= 1_000_000_000
    # the whole file is ~4x the weights: reading it would blow far past this bound
    assert result["peak_rss_growth_bytes"] < 1.3 * result["weights_bytes"], result
