"""``s4edge models …`` and ``s4edge detect``, driven like a technician would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.vision.catalogue import default_models_dir

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent: the reference models live there")

runner = CliRunner()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped manifests without the shipped weights, so fastestdet is pulled like any other model."""
    models = tmp_path / "models"
    shutil.copytree(default_models_dir(), models, ignore=shutil.ignore_patterns("*.onnx"))
    monkeypatch.setenv("S4EDGE_MODELS_DIR", str(models))
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("S4EDGE_MODEL_MIRROR", str(SHARED / "models"))
    return tmp_path / "cache"


def test_list_shows_the_shipped_default_model_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S4EDGE_MODELS_DIR", raising=False)
    monkeypatch.delenv("S4EDGE_MODEL_MIRROR", raising=False)
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "empty-cache"))
    rows = {r["name"]: r for r in json.loads(run("models", "list", "--json").stdout)["models"]}
    assert rows["fastestdet"]["shipped"] and rows["fastestdet"]["sha_ok"]
    assert not rows["mediapipe-pose"]["cached"]
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "120"}).stdout
    assert "fastestdet " in table and "shipped" in table and "verified" in table


def run(*args: str):
    return runner.invoke(app, list(args))


def test_list_shows_cached_and_sha_status(cache: Path) -> None:
    before = json.loads(run("models", "list", "--json").stdout)
    row = next(r for r in before["models"] if r["name"] == "fastestdet")
    assert row == {
        "name": "fastestdet",
        "runtime": "onnx",
        "family": "fastestdet",
        "quantization": "none",
        "cached": False,
        "shipped": False,
        "sha_ok": False,
    }
    assert run("models", "pull", "fastestdet").exit_code == 0
    after = json.loads(run("models", "list", "--json").stdout)
    assert next(r for r in after["models"] if r["name"] == "fastestdet")["sha_ok"] is True
    table = run("models", "list")
    assert table.exit_code == 0 and "mediapipe-pose" in table.stdout


def test_pull_from_a_folder_with_a_tampered_file_is_refused(cache: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "usb"
    mirror.mkdir()
    shutil.copy(SHARED / "models/mediapipe-pose/pose_detection.tflite", mirror / "pose_detection.tflite")
    with (mirror / "pose_detection.tflite").open("r+b") as stream:
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    result = run("models", "pull", "mediapipe-pose", "--from", str(mirror))
    assert result.exit_code == 1
    assert "does not match" in result.output
    verify = run("models", "verify", "mediapipe-pose")
    assert verify.exit_code == 1 and "not cached" in verify.stdout


def test_verify_catches_a_changed_cache_file(cache: Path) -> None:
    assert run("models", "pull", "fastestdet").exit_code == 0
    assert run("models", "verify").stdout.splitlines()[0] == "fastestdet: ok"
    weights = cache / "fastestdet/FastestDet.onnx"
    weights.write_bytes(weights.read_bytes() + b"\0")
    result = run("models", "verify", "fastestdet")
    assert result.exit_code == 1 and result.stdout.splitlines()[0] == "fastestdet: FAIL (sha256)"
    assert "s4edge models pull fastestdet" in result.stdout  # the remedy
    assert "not run: runtime, load" in result.stdout  # weights that are not the manifest's are never loaded


def test_detect_prints_people_as_json(cache: Path) -> None:
    assert run("models", "pull", "fastestdet").exit_code == 0
    result = run("detect", str(SHARED / "data/images/coral_squat.bmp"), "--model", "fastestdet", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"]["name"] == "fastestdet"
    labels = [d["label"] for d in report["results"][0]["detections"]]
    assert labels.count("person") == 1


def test_detect_runs_on_a_video_every_nth_frame(cache: Path) -> None:
    assert run("models", "pull", "fastestdet").exit_code == 0
    video = SHARED / "data/video/bench_people_640x480_15fps.avi"
    result = run("detect", str(video), "--every", "100", "--json", "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    frames = [r["frame"] for r in json.loads(result.stdout)["results"]]
    assert frames == [0, 100, 200]
    assert any(d["label"] == "person" for r in json.loads(result.stdout)["results"] for d in r["detections"])


def test_detect_an_uncached_model_says_how_to_fix_it(cache: Path) -> None:
    result = run("detect", str(SHARED / "data/images/coral_squat.bmp"), "--model", "mediapipe-pose")
    assert result.exit_code == 1
    assert "s4edge models pull mediapipe-pose" in result.output


def test_bench_reports_percentiles_as_json(cache: Path) -> None:
    assert run("models", "pull", "mediapipe-pose").exit_code == 0
    result = run("models", "bench", "mediapipe-pose", "--runs", "3", "--warmup", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["runs"] == 3
    assert 0 < report["infer_ms"]["min"] <= report["infer_ms"]["p50"] <= report["infer_ms"]["p99"]


def test_eval_reports_map_per_class(cache: Path) -> None:
    assert run("models", "pull", "fastestdet").exit_code == 0
    result = run("models", "eval", "fastestdet", "--data", str(SHARED / "data/coco8"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["map50"] > 0.3
    assert any(c["label"] == "person" and c["ap50"] > 0 for c in report["classes"])


def test_eval_on_a_folder_without_images_is_a_clear_error(cache: Path, tmp_path: Path) -> None:
    assert run("models", "pull", "fastestdet").exit_code == 0
    result = run("models", "eval", "fastestdet", "--data", str(tmp_path))
    assert result.exit_code == 1 and "no images" in result.output


@pytest.mark.slow
def test_quantize_adds_a_verified_int8_model(cache: Path) -> None:
    assert run("models", "pull", "fastestdet").exit_code == 0
    result = run("models", "quantize", "fastestdet", "--calib", str(SHARED / "data/images"), "--runs", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["quantized"] == "fastestdet-int8"
    assert report["size_bytes"]["fastestdet-int8"] < report["size_bytes"]["fastestdet"] / 2
    assert run("models", "verify", "fastestdet-int8").stdout.splitlines()[0] == "fastestdet-int8: ok"
    found = run("detect", str(SHARED / "data/images/coral_squat.bmp"), "--model", "fastestdet-int8", "--json")
    detections = json.loads(found.stdout)["results"][0]["detections"]
    assert [d["label"] for d in detections].count("person") == 1


def test_quantize_never_replaces_a_model_unasked(cache: Path, tmp_path: Path) -> None:
    # --out-name replaced the researcher's own model (or the model being quantized) without a word
    mine = tmp_path / "mine.onnx"
    shutil.copy(SHARED / "models/fastestdet/FastestDet.onnx", mine)
    assert run("models", "add", str(mine), "--name", "mine").exit_code == 0
    before = (cache / "mine" / "manifest.yaml").read_text()
    calib = str(SHARED / "data/images")
    taken = run("models", "quantize", "mine", "--calib", calib, "--out-name", "mine")
    assert taken.exit_code == 1 and "--out-name mine is the model being quantized" in taken.stderr
    assert run("models", "pull", "fastestdet").exit_code == 0
    other = run("models", "quantize", "fastestdet", "--calib", calib, "--out-name", "mine")
    assert other.exit_code == 1 and "'mine' is already in your catalogue" in other.stderr and "--force" in other.stderr
    packaged = run("models", "quantize", "mine", "--calib", calib, "--out-name", "mediapipe-pose")
    assert packaged.exit_code == 1 and "choose another --out-name" in packaged.stderr
    assert (cache / "mine" / "manifest.yaml").read_text() == before
    assert sorted(p.name for p in (cache / "mine").iterdir()) == ["labels.txt", "manifest.yaml", "mine.onnx"]


@pytest.mark.slow
def test_a_quantized_model_is_not_quantized_again(cache: Path) -> None:
    # its QDQ graph quantized again could not be loaded, and was left in the catalogue all the same
    assert run("models", "pull", "fastestdet").exit_code == 0
    calib = str(SHARED / "data/images")
    assert run("models", "quantize", "fastestdet", "--calib", calib, "--runs", "1").exit_code == 0
    again = run("models", "quantize", "fastestdet-int8", "--calib", calib, "--runs", "1")
    assert again.exit_code == 1 and isinstance(again.exception, SystemExit), again.exception
    assert "fastestdet-int8 is already quantized (int8-static)" in again.stderr
    assert not (cache / "fastestdet-int8-int8").exists()
    replaced = run("models", "quantize", "fastestdet", "--calib", calib, "--runs", "1", "--force", "--json")
    assert replaced.exit_code == 0, replaced.output
    assert run("models", "verify", "fastestdet-int8").stdout.splitlines()[0] == "fastestdet-int8: ok"


def test_eval_scores_a_one_class_model_on_its_class_alone(cache: Path) -> None:
    # the pose detector (person only) was scored on coco8's dogs and oranges too: an AP of 0 for
    # each of 11 classes it has no label for, averaged into an mAP@0.5 of 0.005
    assert run("models", "pull", "mediapipe-pose").exit_code == 0
    result = run("models", "eval", "mediapipe-pose", "--data", str(SHARED / "data/coco8"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [person] = report["classes"]
    assert person["label"] == "person" and person["instances"] == report["instances"] == 10
    assert report["map50"] == person["ap50"] > 0
    assert report["not_scored"] and "0" not in report["not_scored"]
    assert sum(report["not_scored"].values()) == 20
    table = run("models", "eval", "mediapipe-pose", "--data", str(SHARED / "data/coco8"))
    assert "not scored: 20 objects of classes 16, 17" in table.stdout


def test_detect_on_a_folder_goes_on_past_an_unreadable_image(cache: Path, tmp_path: Path) -> None:
    # the first unreadable file ended the run: the photos after it were never seen, and --json printed nothing
    assert run("models", "pull", "fastestdet").exit_code == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_broken.jpg").write_bytes(b"not a jpeg")
    shutil.copy(SHARED / "data/images/coral_squat.bmp", folder / "b_squat.bmp")
    result = run("detect", str(folder), "--json")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.strip() == f"error: {folder / 'a_broken.jpg'}: not a readable image; skipped"
    broken, squat = json.loads(result.stdout)["results"]
    assert broken["error"] == "not a readable image" and "detections" not in broken
    assert [d["label"] for d in squat["detections"]].count("person") == 1
    single = run("detect", str(folder / "a_broken.jpg"))
    assert single.exit_code == 1 and "not a readable image" in single.stderr
