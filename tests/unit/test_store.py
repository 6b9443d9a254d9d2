"""The store without a session: a delta-spark jar resolution that fails says so clearly."""

import pytest


def test_delta_jar_resolution_fails_clearly(tmp_path):
    """A coordinate Maven Central does not have, and a resolution that takes too long: a clear error
    naming what was asked for, never a hang, and no half cache that a later run would trust."""
    from instructlake.jobs.session import resolve_packages

    with pytest.raises(RuntimeError, match=r"(?s)could not resolve io\.delta:no-such-artifact_2\.13:0\.0\.1 .*not found.*delta\.backend=rs"):
        resolve_packages(["io.delta:no-such-artifact_2.13:0.0.1"], tmp_path, timeout_s=120)
    with pytest.raises(RuntimeError, match=r"no answer within delta\.resolve_timeout_s=0\.5s"):
        resolve_packages(["io.delta:delta-storage:4.4.0"], tmp_path, timeout_s=0.5)
    assert not list(tmp_path.glob("*/resolved.txt"))

