"""A researcher's own model: the mistakes of a hand-written manifest or a `models add`, each
refused in one line that names the field and what to do, never obeyed into wrong results."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.doctor import check_model
from s4edge.edge.vision.catalogue import Catalogue, CatalogueError, sha256_file
from s4edge.edge.vision.detector import Detector
from s4edge.edge.vision.manifest import ManifestError, load_manifest, parse_manifest
from s4edge.edge.vision.source import Config as VisionConfig

REPO = Path(__file__).resolve().parents[2]
FASTESTDET_TFLITE_SHA = "1018a26ec3e69ad675408be70671eaf236cab789cd2c2cda64c7a7c3c984305c"


@pytest.fixture
def mine(tmp_path: Path, shared: Path) -> tuple[Catalogue, dict, Path]:
    """FastestDet copied under a name of the researcher's into the cache, with the hand-written
    manifest models/README.md ("By hand") describes and COCO's 80 names beside it."""
    folder = tmp_path / "cache" / "mine"
    folder.mkdir(parents=True)
    shutil.copy(shared / "models/fastestdet/FastestDet.onnx", folder)
    shutil.copy(shared / "models/fastestdet/coco.names", folder / "labels.txt")
    data = yaml.safe_load((REPO / "models/fastestdet/manifest.yaml").read_text())
    data["name"] = "mine"
    del data["url"]  # a model of one's own has none
    return Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache"), data, folder


def write(folder: Path, data: dict) -> None:
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "count"),
    [
        (lambda names: names[1:], 79),  # the first line lost: every person reported as a bicycle
        (lambda names: ["# COCO class names", *names], 81),  # a header line: every person named by it
    ],
)
def test_a_labels_file_with_a_line_too_few_or_too_many_is_refused_at_load(mine, edit, count: int) -> None:
    catalogue, data, folder = mine
    names = (folder / "labels.txt").read_text().splitlines()
    (folder / "labels.txt").write_text("\n".join(edit(names)) + "\n")
    write(folder, data)
    with pytest.raises(ManifestError) as caught:
        Detector.from_catalogue(catalogue, "mine")
    assert caught.value.field == "labels"
    assert f"{count} labels" in caught.value.problem and "80 classes" in caught.value.problem


def test_the_right_labels_file_loads(mine) -> None:
    catalogue, data, folder = mine
    write(folder, data)
    assert len(Detector.from_catalogue(catalogue, "mine").labels) == 80


def test_models_add_refuses_labels_that_do_not_match_the_classes(
    tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    names = tmp_path / "site.names"
    names.write_text("".join(f"{n}\n" for n in (shared / "models/fastestdet/coco.names").read_text().split("\n")[1:]))
    model = shared / "models/fastestdet-tflite/FastestDet_float32.tflite"
    result = CliRunner().invoke(app, ["models", "add", str(model), "--name", "site", "--labels", str(names)])
    assert result.exit_code == 1, result.output
    assert "79 labels" in result.output and "80 classes" in result.output and "--labels" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cache" / "site").exists()


@pytest.mark.parametrize(
    ("layout", "shape"),
    [("NCHW", [1, 352, 352, 3]), ("NHWC", [1, 3, 352, 352])],
)
def test_a_layout_that_does_not_fit_the_shape_names_input_layout(mine, layout: str, shape: list[int]) -> None:
    # it was refused as "decoder: a 22 × 22 grid does not tile the 352 × 3 input (check
    # decoder.options.layout)": the wrong field, and a fix that does not help
    _, data, folder = mine
    data["input"].update(layout=layout, shape=shape)
    write(folder, data)
    with pytest.raises(ManifestError) as caught:
        load_manifest(folder / "manifest.yaml")
    assert caught.value.field == "input.layout"
    other = "NHWC" if layout == "NCHW" else "NCHW"
    assert f"layout: {other}" in caught.value.problem


def test_a_misspelt_key_is_named_once_with_the_key_it_meant(mine) -> None:
    _, data, _ = mine
    data["decoder"]["score_treshold"] = data["decoder"].pop("score_threshold")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, "manifest.yaml")
    assert caught.value.field == "decoder.score_treshold"
    assert str(caught.value).count("score_treshold") == 1  # was "decoder.score_treshold: decoder.score_treshold: …"
    assert "did you mean score_threshold" in caught.value.problem


def test_an_upper_case_sha256_is_read_as_the_same_digest(mine) -> None:
    # Windows' Get-FileHash and certutil print it upper case
    _, data, _ = mine
    data["sha256"] = data["sha256"].upper()
    assert parse_manifest(data, "manifest.yaml").sha256 == data["sha256"].lower()


def test_a_wrong_sha256_in_your_own_manifest_says_where_to_fix_it(mine) -> None:
    # it said "run `s4edge models pull mine`", which only says the model has no url
    catalogue, data, folder = mine
    data["sha256"] = FASTESTDET_TFLITE_SHA
    write(folder, data)
    with pytest.raises(CatalogueError) as caught:
        Detector.from_catalogue(catalogue, "mine")
    message = str(caught.value)
    assert str(folder / "manifest.yaml") in message and "31cb14c017fce347" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("shape", [1, 3, 320, 320]), ("layout", "NHWC")],  # refused at load, or already in the manifest
)
def test_doctor_sends_a_manifest_fault_to_the_manifest_not_elsewhere(mine, field: str, value) -> None:
    catalogue, data, folder = mine
    data["input"][field] = value
    write(folder, data)
    camera = {"url": "0", "fps": 1}
    config = SimpleNamespace(
        sources=[VisionConfig.model_validate({"type": "vision", "camera": camera, "model": {"name": "mine"}})]
    )
    (check,) = check_model(config, catalogue)
    assert check.status == "FAIL" and f"input.{field}" in check.detail
    assert f"input.{field}" in check.hint and "manifest" in check.hint  # not providers, nor the model's name


@pytest.fixture
def own(tmp_path: Path, shared: Path):
    """A shared model file under a name of the researcher's in the cache, with the packaged manifest
    written for it (and COCO's names beside it where that manifest names a labels file)."""

    def make(packaged: str, weights: str) -> tuple[Catalogue, dict, Path]:
        folder = tmp_path / "cache" / "mine"
        folder.mkdir(parents=True)
        shutil.copy(shared / "models" / weights, folder)
        data = yaml.safe_load((REPO / "models" / packaged / "manifest.yaml").read_text())
        data["name"] = "mine"
        data.pop("url", None)
        if isinstance(data["labels"], str):
            shutil.copy(shared / "models/fastestdet/coco.names", folder / "labels.txt")
            data["labels"] = "labels.txt"
        write(folder, data)
        return Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache"), data, folder

    return make


@pytest.mark.parametrize(
    ("packaged", "weights", "wrong", "right"),
    [
        ("fastestdet", "fastestdet/FastestDet.onnx", "tflite", "onnx"),
        ("fastestdet-tflite", "fastestdet-tflite/FastestDet_float32.tflite", "onnx", "tflite"),
        ("mediapipe-pose", "mediapipe-pose/pose_detection.tflite", "onnx", "tflite"),
    ],
)
def test_a_runtime_the_weight_file_contradicts_is_refused_naming_runtime_not_the_file(
    own, packaged: str, weights: str, wrong: str, right: str
) -> None:
    # it said "…/FastestDet.onnx: file: not a loadable TFLite model: The model is not a valid
    # Flatbuffer buffer": the researcher went looking for a damaged download
    catalogue, data, folder = own(packaged, weights)
    data["runtime"] = wrong
    write(folder, data)
    with pytest.raises(ManifestError) as caught:
        Detector.from_catalogue(catalogue, "mine")
    assert caught.value.field == "runtime" and caught.value.source == str(folder / "manifest.yaml")
    assert f"says {wrong}" in caught.value.problem and f"set runtime: {right}" in caught.value.problem
    assert "loadable" not in str(caught.value)


def test_a_damaged_weight_file_is_still_blamed_on_the_file(own) -> None:
    # neither format by its bytes: no runtime fits it better, so the runtime's loader says what is wrong
    catalogue, data, folder = own("fastestdet-tflite", "fastestdet-tflite/FastestDet_float32.tflite")
    weights = folder / data["file"]
    weights.write_bytes(weights.read_bytes()[4:])  # the TFL3 identifier moved off bytes 4..8
    data["sha256"] = sha256_file(weights)
    write(folder, data)
    with pytest.raises(ManifestError, match="not a loadable TFLite model") as caught:
        Detector.from_catalogue(catalogue, "mine")
    assert caught.value.field == "file"


def test_the_weight_format_is_told_by_its_bytes_not_its_name(shared: Path, tmp_path: Path) -> None:
    from s4edge.edge.vision.backends import weight_format

    models = shared / "models"
    assert weight_format(models / "fastestdet/FastestDet.onnx") == "onnx"
    onnx = pytest.importorskip("onnx")  # the research extra writes models with every ModelProto field
    model = onnx.load(str(models / "fastestdet/FastestDet.onnx"))
    model.configuration.add()  # field 26 (onnx 1.18)
    onnx.save(model, str(tmp_path / "configured.onnx"))
    assert weight_format(tmp_path / "configured.onnx") == "onnx"
    assert {weight_format(p) for p in models.glob("*/*.tflite")} == {"tflite"}
    renamed = tmp_path / "pose.onnx"
    shutil.copy(models / "mediapipe-pose/pose_detection.tflite", renamed)
    assert weight_format(renamed) == "tflite"
    onnx_bytes = (models / "fastestdet/FastestDet.onnx").read_bytes()
    for name, content in [("cut.onnx", onnx_bytes[: len(onnx_bytes) // 2]), ("empty", b""), ("text", b"hello\n")]:
        (tmp_path / name).write_bytes(content)
        assert weight_format(tmp_path / name) is None, name


@pytest.mark.parametrize(
    ("packaged", "weights", "wrong", "right"),
    [
        ("fastestdet-tflite", "fastestdet-tflite/FastestDet_float32.tflite", "int8-full", "none"),
        ("fastestdet-tflite-int8", "fastestdet-tflite/FastestDet_full_integer_quant.tflite", "none", "int8-full"),
        ("fastestdet", "fastestdet/FastestDet.onnx", "int8-static", "none"),
        ("mediapipe-pose", "mediapipe-pose/pose_detection.tflite", "none", "fp16"),
    ],
)
def test_a_quantization_the_model_contradicts_is_refused_naming_the_one_that_fits(
    own, packaged: str, weights: str, wrong: str, right: str
) -> None:
    # a float model labelled int8 (or the other way) loaded silently, and `models list` said so
    catalogue, data, folder = own(packaged, weights)
    data["quantization"] = wrong
    write(folder, data)
    with pytest.raises(ManifestError) as caught:  # as `s4edge models verify` loads it: ONNX's graph read too
        Detector(catalogue.get("mine"), catalogue.weights("mine"), audit=True)
    assert caught.value.field == "quantization" and caught.value.source == str(folder / "manifest.yaml")
    assert f"says {wrong}" in caught.value.problem and f"set quantization: {right}" in caught.value.problem


def test_a_node_runs_a_model_whose_quantization_label_is_wrong_and_warns(own, caplog: pytest.LogCaptureFixture) -> None:
    # the label describes the model and changes nothing it runs: manifests earlier releases
    # wrote (pose said none for fp16 weights) ran there, and must still run on a node
    catalogue, data, folder = own("mediapipe-pose", "mediapipe-pose/pose_detection.tflite")
    data["quantization"] = "none"
    write(folder, data)
    with caplog.at_level(logging.WARNING, logger="s4edge.edge.vision.detector"):
        detector = Detector.from_catalogue(catalogue, "mine")
    assert detector.manifest.quantization == "none"
    assert "says none, but the model is fp16" in caplog.text and "models verify" in caplog.text


def test_without_the_onnx_package_an_onnx_models_quantization_is_checked_by_its_input(
    own, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a node installs s4edge[node,vision], without onnx: the graph cannot be read, the input still can
    monkeypatch.setitem(sys.modules, "onnx", None)
    catalogue, data, folder = own("fastestdet", "fastestdet/FastestDet.onnx")
    data["quantization"] = "int8-full"
    write(folder, data)
    with pytest.raises(ManifestError) as caught:
        Detector(catalogue.get("mine"), catalogue.weights("mine"), audit=True)
    assert caught.value.field == "quantization" and "float32 input" in caught.value.problem
    data["quantization"] = "int8-static"  # float input and int8 weights: it could be
    write(folder, data)
    from s4edge.edge.vision.detector import ModelCheck

    checks: list[ModelCheck] = []
    Detector(catalogue.get("mine"), catalogue.weights("mine"), on_check=checks.append)
    (quantization,) = [c for c in checks if c.name == "quantization"]
    assert quantization.status == "skip" and "s4edge[research]" in quantization.remedy
