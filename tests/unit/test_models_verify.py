"""``s4edge models verify``: a researcher asks whether a model will run, not only whether its bytes are right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.vision.catalogue import default_models_dir, sha256_file

runner = CliRunner()
# What verify checks once the sha256 matches, in order: each needs the ones before it.
LOAD_CHECKS = ("runtime", "load", "input", "outputs", "quantization", "decoder", "labels", "inference")


@pytest.fixture
def cache(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The packaged manifests without the shipped weights, a private cache, and the shared mirror."""
    models = tmp_path / "models"
    shutil.copytree(default_models_dir(), models, ignore=shutil.ignore_patterns("*.onnx"))
    monkeypatch.setenv("S4EDGE_MODELS_DIR", str(models))
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("S4EDGE_MODEL_MIRROR", str(shared / "models"))
    return tmp_path / "cache"


def verify(*args: str):
    return runner.invoke(app, ["models", "verify", *args])


def mine(cache: Path, shared: Path, packaged: str, weights: str) -> tuple[dict, Path]:
    """A shared model under the researcher's name ``mine``, with the packaged manifest written for it."""
    folder = cache / "mine"
    folder.mkdir(parents=True)
    shutil.copy(shared / "models" / weights, folder)
    shutil.copy(shared / "models/fastestdet/coco.names", folder / "labels.txt")
    data = yaml.safe_load((default_models_dir() / packaged / "manifest.yaml").read_text())
    data.update(name="mine", labels="labels.txt")
    data.pop("url", None)
    return data, folder


def write(folder: Path, data: dict) -> None:
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize("model", ["fastestdet", "fastestdet-tflite-int8-3out", "mediapipe-pose"])
def test_a_model_that_runs_passes_each_check_by_name(cache: Path, model: str) -> None:
    assert runner.invoke(app, ["models", "pull", model]).exit_code == 0
    result = verify(model)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{model}: ok"
    assert [line.split()[:2] for line in lines[1:]] == [["pass", c] for c in ("sha256", *LOAD_CHECKS)]
    assert "ran once on a grey" in lines[-1]


@pytest.mark.parametrize(
    ("packaged", "weights", "mistake", "check", "field"),
    [
        ("fastestdet", "fastestdet/FastestDet.onnx", lambda d, f: d.update(runtime="tflite"), "runtime", "runtime"),
        (
            "fastestdet-tflite",
            "fastestdet-tflite/FastestDet_float32.tflite",
            lambda d, f: d.update(runtime="onnx"),
            "runtime",
            "runtime",
        ),
        (
            "fastestdet",
            "fastestdet/FastestDet.onnx",
            lambda d, f: d["outputs"][0].update(shape=[1, 85, 20, 20]),
            "outputs",
            "outputs.0.shape",
        ),
        (
            "fastestdet-tflite",
            "fastestdet-tflite/FastestDet_float32.tflite",
            lambda d, f: d.update(quantization="int8-full"),
            "quantization",
            "quantization",
        ),
        (
            "fastestdet",
            "fastestdet/FastestDet.onnx",  # the first name lost: every person reported as a bicycle
            lambda d, f: (f / "labels.txt").write_text("\n".join((f / "labels.txt").read_text().split("\n")[1:])),
            "labels",
            "labels",
        ),
    ],
)
def test_a_model_that_would_not_run_fails_at_the_check_at_fault_with_the_fix(
    cache: Path, shared: Path, packaged: str, weights: str, mistake, check: str, field: str
) -> None:
    # each of these said "mine: ok" (its sha256 matched), then `s4edge detect` refused it
    data, folder = mine(cache, shared, packaged, weights)
    mistake(data, folder)
    write(folder, data)
    result = verify("mine")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"mine: FAIL ({check})"
    assert any(line.split()[:3] == ["FAIL", check, f"{field}:"] for line in lines)
    assert f"fix: edit {field} in {folder / 'manifest.yaml'}" in result.stdout
    after = LOAD_CHECKS[LOAD_CHECKS.index(check) + 1 :]
    assert lines[-1] == f"  not run: {', '.join(after)} (they need {check} to pass)"
    detected = runner.invoke(app, ["detect", str(shared / "data/images/coral_squat.bmp"), "--model", "mine"])
    # a wrong quantization label changes nothing the model runs: detect, like a node, runs it
    assert detected.exit_code == (0 if check == "quantization" else 1), detected.output


def test_a_file_its_runtime_cannot_open_fails_at_load_saying_to_export_it_again(cache: Path, shared: Path) -> None:
    data, folder = mine(cache, shared, "fastestdet", "fastestdet/FastestDet.onnx")
    weights = folder / data["file"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut short, then hashed
    data["sha256"] = sha256_file(weights)
    write(folder, data)
    report = json.loads(verify("mine", "--json").stdout)["models"][0]
    assert report["failed"] == "load" and report["not_run"] == list(LOAD_CHECKS[2:])
    load = report["checks"][-1]
    assert load["status"] == "fail" and "not a loadable ONNX model" in load["detail"]
    assert "export the model again" in load["remedy"]


def test_sha_only_checks_the_bytes_without_loading(cache: Path, shared: Path) -> None:
    data, folder = mine(cache, shared, "fastestdet", "fastestdet/FastestDet.onnx")
    data["runtime"] = "tflite"  # found only by loading
    write(folder, data)
    result = verify("mine", "--sha-only")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "mine: sha256 ok, not loaded (--sha-only)",
        f"  pass  sha256       {folder / data['file']} has the manifest's sha256",
    ]
    assert verify("mine").exit_code == 1
