"""Maintain's config: an unknown table is a config error naming it."""

import pytest

from instructlake.jobs.config import ConfigError, load_config


def test_unknown_table_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="maintain.tables.*unknown table.*'promts'"):
        load_config([], [f"run.lake_root={tmp_path}", "maintain.tables=[promts]"])

