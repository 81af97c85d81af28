"""The ``s4edge`` command starts without its commands' libraries, lists every command from
its entry point without importing it, and says in one line which extra a command needs
when its libraries are missing (timings: scripts/bench_startup.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("fastapi", "sqlalchemy", "cv2", "scipy", "onnxruntime", "numpy", "uvicorn", "lxml")
# Runs the CLI as the console script does; argv[1] lists modules to make look uninstalled.
RUN = """
import sys
for name in filter(None, sys.argv[1].split(",")):
    sys.modules[name] = None
sys.argv = ["s4edge", *sys.argv[2:]]
from s4edge.cli import main
try:
    main()
finally:
    print("imported:", *sorted(m for m in {heavy} if sys.modules.get(m) is not None), file=sys.stderr)
""".replace("{heavy}", repr(set(HEAVY)))


def s4edge(*args: str, missing: tuple[str, ...] = (), path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)} if path is not None else None
    return subprocess.run(
        [sys.executable, "-c", RUN, ",".join(missing), *args], capture_output=True, text=True, timeout=120, env=env
    )


def imported(done: subprocess.CompletedProcess[str]) -> list[str]:
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("imported:")]
    return line.split()[1:]


def errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if not line.startswith("imported:")]


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_starting_imports_no_command_library(flag: str) -> None:
    done = s4edge(flag)
    assert done.returncode == 0, done.stderr
    assert imported(done) == []


def test_help_lists_each_entry_point_with_its_help() -> None:
    done = s4edge("--help")
    rows = {line.strip("│ ").split("  ")[0]: line for line in done.stdout.splitlines() if "  " in line}
    assert "The central aggregator: ingest, store, HTTP API, dashboard." in rows["aggregator"]
    assert "Run a detector on images or a video" in rows["detect"]  # a function's docstring
    for name in ("agent", "doctor", "provision", "sensors", "models", "schema", "ng112", "fleet", "demo", "bench"):
        assert name in rows


def test_version_is_the_package_version() -> None:
    from s4edge import __version__

    assert s4edge("--version").stdout.strip() == __version__


def test_a_missing_extra_is_one_line_naming_it() -> None:
    done = s4edge("aggregator", "run", "--broker", "mqtt://127.0.0.1:1", missing=("fastapi", "uvicorn"))
    assert done.returncode == 2
    (line,) = errors(done)
    assert line.startswith("error: 's4edge aggregator' needs the aggregator extra: pip install 's4edge[aggregator]'")


def test_detect_without_the_vision_runtime_names_the_vision_extra(tmp_path: Path) -> None:
    done = s4edge("detect", str(tmp_path), missing=("cv2", "onnxruntime"))
    assert done.returncode == 2
    (line,) = errors(done)
    assert "needs the vision extra: pip install 's4edge[vision]'" in line


def test_a_subcommand_names_the_extra_of_what_it_misses() -> None:
    # nir predict runs on a node; nir train also needs scikit-learn, which only research installs
    done = s4edge("nir", "train", "--sim", "--out", "/nonexistent/m.json", missing=("sklearn",))
    (line,) = errors(done)
    assert "'s4edge nir' needs the research extra: pip install 's4edge[research]' (sklearn" in line


@pytest.mark.parametrize(
    "broken",
    [
        "s4edge.cloud_sync.aggregator.app",  # one of our modules: a bug
        "fastapi.routing",  # a module missing inside a package that is installed
    ],
)
def test_an_import_error_that_is_no_missing_extra_stays_a_traceback(broken: str) -> None:
    done = s4edge("aggregator", "run", "--broker", "mqtt://127.0.0.1:1", missing=(broken,))
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ModuleNotFoundError" in done.stderr
    assert "needs the" not in done.stderr


def test_node_commands_run_without_the_aggregator_libraries(tmp_path: Path) -> None:
    centre = ("fastapi", "uvicorn", "sqlalchemy", "psycopg", "amqtt", "pycocotools", "lxml")
    for args in (["provision", "--help"], ["doctor", "--help"], ["agent", "--help"], ["sensors", "--help"]):
        done = s4edge(*args, missing=centre)
        assert done.returncode == 0, (args, done.stderr)
    done = s4edge("schema", "export", str(tmp_path), missing=centre)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "alert.schema.json").exists()


def third_party_plugin(root: Path) -> Path:
    """A distribution beside s4edge with one command whose module must not be imported to list it."""
    info = root / "hello_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hello-plugin\nVersion: 1.0\nProvides-Extra: loud\n"
        'Requires-Dist: loudpkg; extra == "loud"\n'
    )
    (info / "entry_points.txt").write_text("[s4edge.commands]\nhello = hello_plugin:hello [loud]\n")
    (root / "hello_plugin.py").write_text(
        'import sys\nprint("hello_plugin imported", file=sys.stderr)\n\n\n'
        "def hello(loud: bool = False) -> None:\n"
        '    """Say hello from a third-party plugin."""\n'
        "    if loud:\n        import loudpkg  # noqa: F401\n"
        '    print("hello")\n'
    )
    return root


def test_a_third_party_command_is_listed_unimported_and_runs(tmp_path: Path) -> None:
    root = third_party_plugin(tmp_path)
    listing = s4edge("--help", path=root)
    assert "Say hello from a third-party plugin." in listing.stdout
    assert "hello_plugin imported" not in listing.stderr
    ran = s4edge("hello", path=root)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hello"


def test_a_third_party_command_names_its_own_distributions_extra(tmp_path: Path) -> None:
    done = s4edge("hello", "--loud", path=third_party_plugin(tmp_path))
    assert done.returncode == 2
    assert errors(done)[-1] == (
        "error: 's4edge hello' needs the loud extra: pip install 'hello-plugin[loud]' (loudpkg is not installed)"
    )


def test_a_plugin_package_that_raises_as_it_is_imported_breaks_only_its_own_command(tmp_path: Path) -> None:
    # 'badplug is broken' was a traceback from every s4edge command, the node agent's included
    info = tmp_path / "badplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[s4edge.commands]\nbad = badplug.cmd:app\n")
    (tmp_path / "badplug").mkdir()
    (tmp_path / "badplug" / "__init__.py").write_text('raise RuntimeError("badplug is broken")\n')
    listing = s4edge("--help", path=tmp_path)
    assert listing.returncode == 0 and "bad" in listing.stdout and "Traceback" not in listing.stderr
    assert s4edge("agent", "--help", path=tmp_path).returncode == 0
    ran = s4edge("bad", path=tmp_path)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert errors(ran) == ["error: 's4edge bad' (badplug.cmd:app) failed to load: RuntimeError('badplug is broken')"]
