"""Packaging: a plain `pip install .` ships the schemas and the `recq` command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import schemas

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel `pip` builds from this checkout, as a non-editable install would get it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("recq-*.whl")
    archive = zipfile.ZipFile(built)
    yield archive
    archive.close()


class TestWheel:
    def test_every_schema_and_example_is_in_the_wheel(self, wheel):
        """Each JSON file under schemas/ is shipped inside the package."""
        names = set(wheel.namelist())
        source = Path(schemas.__file__).parent
        expected = {f"schemas/{p.relative_to(source)}" for p in source.rglob("*.json")}
        assert expected
        assert expected <= names

    def test_the_recq_command_is_declared(self, wheel):
        """The wheel declares the `recq` console script."""
        [entry_points] = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
        assert "recq = worker.cli:main" in wheel.read(entry_points).decode()

    def test_the_code_packages_are_in_the_wheel(self, wheel):
        """worker/, tasks/ and the sandbox are shipped; tests are not."""
        names = wheel.namelist()
        for module in ("worker/app.py", "tasks/recording.py", "worker/sandbox/server.py"):
            assert module in names
        assert not [n for n in names if n.startswith("tests/")]

    def test_redis_replies_are_parsed_by_hiredis(self, wheel, app):
        """The wheel requires hiredis, and recq's Redis clients use it: parsing replies in C is
        a seventh of a worker's throughput (docs/performance.md)."""
        [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: redis[hiredis]")
        ]
        assert requires
        connection = app.redis.connection_pool.get_connection()
        try:
            assert type(connection._parser).__name__ == "_HiredisParser"
        finally:
            app.redis.connection_pool.release(connection)
