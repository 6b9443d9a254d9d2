"""Curate's config without Spark: steps turned off, and the near-dedup bands it derives."""

from __future__ import annotations

import pytest


def test_curate_config_off_and_bands(tmp_path):
    from instructlake.jobs.config import ConfigError, load_config

    f = tmp_path / "c.yaml"
    f.write_text("curate:\n  filters:\n    moderation: off\n    template: {action: off}\n")  # YAML 1.1: off is false
    conf = load_config([f])
    assert conf.curate.filters.moderation == "off" and conf.curate.filters.template.action == "off"
    with pytest.raises(ConfigError, match="set both bands and rows"):
        load_config([], ["curate.near_dedup.bands=10"])
    with pytest.raises(ConfigError, match="exceeds num_perm"):
        load_config([], ["curate.near_dedup.bands=20", "curate.near_dedup.rows=10"])

