"""Maintain's config and what it asks of the store: an unknown table is a config error naming it; a
retention under Delta's 168 hours needs `force`, and never reaches the tables every run writes unleased."""

from types import SimpleNamespace

import pytest

from instructlake.jobs.config import ConfigError, load_config


def test_unknown_table_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="maintain.tables.*unknown table.*'promts'"):
        load_config([], [f"run.lake_root={tmp_path}", "maintain.tables=[promts]"])



def test_retention_under_168_hours_needs_force(tmp_path):
    with pytest.raises(ConfigError, match=r"maintain\.retention_hours: .*maintain\.force.*\(from --set maintain\.retention_hours\)"):
        load_config([], [f"run.lake_root={tmp_path}", "maintain.retention_hours=24"])
    assert load_config([], ["maintain.retention_hours=24", "maintain.force=true"]).maintain.retention_hours == 24
    assert load_config([], ["maintain.retention_hours=200"]).maintain.force is False


class RecordingStore:
    """The store calls maintain makes, recorded; every table exists and holds one row."""

    def __init__(self, names):
        self.names, self.vacuumed, self.compacted = set(names), {}, []

    def exists(self, name):
        return name in self.names

    def upgrade(self, name):
        return None

    def file_stats(self, name):
        return {"rows": 1, "files": 1, "bytes": 1}

    def compact(self, name, target_bytes, *, run_id, stage):
        self.compacted.append(name)
        return {}

    def vacuum(self, name, retention_hours):
        self.vacuumed[name] = retention_hours
        return 0


def test_runs_and_leases_are_never_vacuumed_under_168_hours(tmp_path):
    """Every run writes `runs` and `leases` at any time and maintain leases neither: with force, the other
    tables are vacuumed at the hours asked for, those two at Delta's safe 168 hours still (compacted all the same)."""
    from instructlake.jobs import maintain

    sets = [f"run.lake_root={tmp_path}", "maintain.retention_hours=0", "maintain.force=true", "maintain.dedup=false", "maintain.staging=false"]
    store = RecordingStore(["prompts", "responses", "runs", "leases"])
    maintain.run(SimpleNamespace(conf=load_config([], sets), store=store, run_id="r"))
    assert store.vacuumed == {"prompts": 0, "responses": 0, "runs": 168, "leases": 168}
    assert sorted(store.compacted) == ["leases", "prompts", "responses", "runs"]
