"""What a stage run leases: output directories by location, a URI as the URI (every host and working
directory names one export the same way), a local path resolved."""

from instructlake.jobs.config import load_config
from instructlake.jobs.runs import writes


def test_export_and_report_leases_keep_uris_and_resolve_local_paths(tmp_path, monkeypatch):
    uris = ["export.path=s3://b/out/", "report.path=abfss://container@acct.dfs.core.windows.net/reports//"]
    leased = []
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        conf = load_config([], uris)
        leased.append((writes(conf, "export"), writes(conf, "report")))
    assert leased[0] == leased[1] == (["path:s3://b/out"], ["path:abfss://container@acct.dfs.core.windows.net/reports"])
    # The same bucket through another Hadoop connector, credentials in the URI: one lease, no secret in it.
    assert writes(load_config([], ["export.path=S3A://KEY:SECRET@b/out"]), "export") == ["path:s3://b/out"]
    local = load_config([], ["export.path=out/", "report.path=../reports"])
    assert writes(local, "export") == [f"path:{(tmp_path / 'b' / 'out').resolve()}"]
    assert writes(local, "report") == [f"path:{(tmp_path / 'reports').resolve()}"]
