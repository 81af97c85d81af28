"""The model catalogue: manifests, pulling with sha256 checks, and refusing bad models at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from s4edge.edge.vision.catalogue import Catalogue, CatalogueError, default_models_dir, sha256_file
from s4edge.edge.vision.detector import Detector
from s4edge.edge.vision.manifest import ManifestError, load_manifest

REPO = Path(__file__).resolve().parents[2]
FASTESTDET_SHA = "31cb14c017fce347cb4c846ec62fdf00d76bb3beecdf4be21e7116ac67feb880"


@pytest.fixture
def catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalogue:
    """The shipped manifests without the shipped weights: fastestdet is pulled like any other model."""
    monkeypatch.delenv("S4EDGE_MODEL_MIRROR", raising=False)
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("*.onnx"))
    return Catalogue(models_dir=models, cache_dir=tmp_path / "cache")


def test_the_shipped_default_model_is_verified_with_no_cache_and_no_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("S4EDGE_MODEL_MIRROR", raising=False)
    shipped = Catalogue(models_dir=default_models_dir(), cache_dir=tmp_path / "empty-cache")
    check = shipped.verify("fastestdet")
    assert check.shipped and check.ok and check.actual_sha256 == FASTESTDET_SHA
    assert shipped.pull("fastestdet") == default_models_dir() / "fastestdet" / "FastestDet.onnx"
    assert not (tmp_path / "empty-cache").exists()  # nothing fetched, nothing copied
    assert Detector.from_catalogue(shipped, "fastestdet").model_ref.sha256 == FASTESTDET_SHA


def test_damaged_shipped_weights_are_refused_at_load(tmp_path: Path) -> None:
    models = tmp_path / "site-packages-models"
    shutil.copytree(default_models_dir() / "fastestdet", models / "fastestdet")
    weights = models / "fastestdet" / "FastestDet.onnx"
    weights.write_bytes(weights.read_bytes()[:-1])
    damaged = Catalogue(models_dir=models, cache_dir=tmp_path / "cache")
    with pytest.raises(CatalogueError, match=r"the manifest says .*; reinstall s4edge"):
        Detector.from_catalogue(damaged, "fastestdet")
    with pytest.raises(CatalogueError, match="reinstall s4edge"):
        damaged.pull("fastestdet")


@pytest.fixture
def own_models(tmp_path: Path, shared: Path) -> tuple[Catalogue, dict]:
    """A researcher's models folder holding one copy of the FastestDet manifest to mutate."""
    models = tmp_path / "models"
    (models / "mine").mkdir(parents=True)
    data = yaml.safe_load((REPO / "models/fastestdet/manifest.yaml").read_text())
    data["name"] = "mine"
    data["labels"] = ["person"]
    cache = tmp_path / "cache"
    (cache / "mine").mkdir(parents=True)
    shutil.copy(shared / "models/fastestdet/FastestDet.onnx", cache / "mine/FastestDet.onnx")
    return Catalogue(models_dir=models, cache_dir=cache), data


def write(catalogue: Catalogue, data: dict) -> None:
    (catalogue.models_dir / data["name"] / "manifest.yaml").write_text(yaml.safe_dump(data))


def test_repo_manifests_all_load(catalogue: Catalogue) -> None:
    entries, problems = catalogue.scan()
    assert problems == []
    assert {"fastestdet", "mediapipe-pose", "fastestdet-tflite", "fastestdet-tflite-int8-3out"} <= set(entries)
    assert len(entries["fastestdet"].labels()) == 80
    assert entries["fastestdet"].labels()[0] == "person"


def test_pull_from_mirror_fills_cache_and_verifies(catalogue: Catalogue, shared: Path) -> None:
    path = catalogue.pull("fastestdet", shared / "models")
    assert path == catalogue.cache_dir / "fastestdet" / "FastestDet.onnx"
    assert sha256_file(path) == FASTESTDET_SHA
    check = catalogue.verify("fastestdet")
    assert check.cached and check.ok


def test_pull_uses_mirror_env_and_finds_files_in_subfolders(
    catalogue: Catalogue, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S4EDGE_MODEL_MIRROR", str(shared / "models"))
    # The int8 TFLite file sits in the mirror's fastestdet-tflite/ folder, not one named after the model.
    path = catalogue.pull("fastestdet-tflite-int8")
    assert catalogue.verify("fastestdet-tflite-int8").ok
    assert path.parent.name == "fastestdet-tflite-int8"


def test_pull_refuses_a_tampered_file_and_leaves_cache_untouched(
    catalogue: Catalogue, shared: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror" / "fastestdet"
    mirror.mkdir(parents=True)
    tampered = mirror / "FastestDet.onnx"
    shutil.copy(shared / "models/fastestdet/FastestDet.onnx", tampered)
    raw = bytearray(tampered.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    tampered.write_bytes(bytes(raw))

    with pytest.raises(CatalogueError, match="does not match"):
        catalogue.pull("fastestdet", tmp_path / "mirror")
    leftovers = list((catalogue.cache_dir / "fastestdet").iterdir())
    assert leftovers == []
    assert not catalogue.verify("fastestdet").cached


def test_a_cached_file_changed_later_is_refused_at_load(catalogue: Catalogue, shared: Path) -> None:
    path = catalogue.pull("fastestdet", shared / "models")
    path.write_bytes(path.read_bytes()[:-1])
    check = catalogue.verify("fastestdet")
    assert check.cached and not check.ok
    with pytest.raises(CatalogueError, match="pull fastestdet"):
        Detector.from_catalogue(catalogue, "fastestdet")


def test_pull_without_mirror_or_url_says_what_to_do(catalogue: Catalogue) -> None:
    with pytest.raises(CatalogueError, match="--from DIR"):
        catalogue.pull("mediapipe-pose")


def test_unknown_model_lists_the_known_ones(catalogue: Catalogue) -> None:
    with pytest.raises(CatalogueError, match=r"known models: .*fastestdet"):
        catalogue.get("yolo-nonexistent")


def test_unknown_key_is_refused_naming_it(own_models: tuple[Catalogue, dict]) -> None:
    catalogue, data = own_models
    data["input"]["colour_order"] = "BGR"
    write(catalogue, data)
    with pytest.raises(ManifestError) as caught:
        catalogue.get("mine")
    assert caught.value.field == "input.colour_order"


def test_name_must_match_its_folder(own_models: tuple[Catalogue, dict]) -> None:
    catalogue, data = own_models
    write(catalogue, data)
    data["name"] = "other"
    (catalogue.models_dir / "mine/manifest.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError) as caught:
        load_manifest(catalogue.models_dir / "mine/manifest.yaml")
    assert caught.value.field == "name"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["input"].update(shape=[1, 3, 320, 320]), "input.shape"),
        (lambda d: d["input"].update(dtype="int8"), "input.dtype"),
        (lambda d: d["input"].update(name="images"), "input.name"),
        (lambda d: d["outputs"][0].update(name="logits"), "outputs.0.name"),
        (lambda d: d["outputs"][0].update(shape=[1, 85, 20, 20]), "outputs.0.shape"),
        (lambda d: d["outputs"].append({"shape": [1, 4]}), "outputs"),
        (lambda d: d["decoder"].update(family="yolov99"), "decoder.family"),
        (lambda d: d["decoder"]["options"].update(layout="CHWN"), "decoder.options.layout"),
        (lambda d: d["decoder"].update(family="yolox", options={}), "decoder"),
    ],
)
def test_a_manifest_that_does_not_fit_the_model_is_refused(own_models, mutate, field: str) -> None:
    catalogue, data = own_models
    mutate(data)
    write(catalogue, data)
    with pytest.raises(ManifestError) as caught:
        Detector.from_catalogue(catalogue, "mine")
    assert caught.value.field == field
    assert caught.value.source.endswith("mine/manifest.yaml")


@pytest.mark.parametrize(
    "labels", ["../../labels.txt", "../fastestdet/../../x.txt", "/etc/passwd", "/", "..", "sub/labels.txt", "."]
)
def test_a_labels_path_outside_the_models_folder_is_refused(own_models, labels: str) -> None:
    catalogue, data = own_models
    data["labels"] = labels
    write(catalogue, data)
    with pytest.raises(ManifestError, match="beside the manifest") as caught:
        catalogue.get("mine")
    assert caught.value.field == "labels"


def test_a_labels_file_beside_the_manifest_is_read(own_models) -> None:
    catalogue, data = own_models
    data["labels"] = "labels.txt"
    write(catalogue, data)
    # line k names class k: a blank line is an unused class, not skipped (every later name moved
    # up one, and a baseball bat was reported as a baseball glove); blank lines at the end are none
    (catalogue.models_dir / "mine/labels.txt").write_text("person\n\nbicycle\n\n\n")
    assert catalogue.get("mine").labels() == ["person", "class_1", "bicycle"]
    data["labels"] = "../theirs/labels.txt"  # a sibling model's, as the LiteRT variants share fastestdet's
    write(catalogue, data)
    (catalogue.models_dir / "theirs").mkdir()
    (catalogue.models_dir / "theirs/labels.txt").write_text("car\n")
    assert catalogue.get("mine").labels() == ["car"]


def test_a_corrupt_weight_file_is_a_clear_error(own_models: tuple[Catalogue, dict]) -> None:
    catalogue, data = own_models
    garbage = catalogue.cache_dir / "mine/FastestDet.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 100)
    data["sha256"] = sha256_file(garbage)
    write(catalogue, data)
    with pytest.raises(ManifestError, match="not a loadable ONNX model") as caught:
        Detector.from_catalogue(catalogue, "mine")
    assert caught.value.field == "file"


def test_missing_execution_provider_lists_the_available_ones(own_models) -> None:
    from s4edge.edge.vision.backends import BackendError, BackendOptions

    catalogue, data = own_models
    write(catalogue, data)
    with pytest.raises(BackendError, match=r"available: .*CPUExecutionProvider"):
        Detector.from_catalogue(catalogue, "mine", BackendOptions(providers=["TensorrtExecutionProvider"]))


def test_declared_int8_input_quantization_must_match_the_model(tmp_path: Path, shared: Path) -> None:
    data = yaml.safe_load((REPO / "models/fastestdet-tflite-int8/manifest.yaml").read_text())
    data["labels"] = ["person"]
    data["input"]["quantization"]["zero_point"] = 0
    catalogue = Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    (catalogue.models_dir / data["name"]).mkdir(parents=True)
    write(catalogue, data)
    catalogue.pull(data["name"], shared / "models")
    with pytest.raises(ManifestError, match="zero_point -128") as caught:
        Detector.from_catalogue(catalogue, data["name"])
    assert caught.value.field == "input.quantization"


def test_int8_tensors_round_trip_through_their_quantization() -> None:
    import numpy as np

    from s4edge.edge.vision.backends import TensorInfo, dequantize, quantize

    info = TensorInfo("x", (4,), "int8", scale=1 / 255, zero_point=-128)
    pixels = np.array([0.0, 0.4, 1.0, 2.0], np.float32)
    q = quantize(pixels, info)
    assert q.dtype == np.int8 and q.tolist() == [-128, -26, 127, 127]  # 2.0 saturates
    np.testing.assert_allclose(dequantize(q, info)[:3], [0.0, 0.4, 1.0], atol=1e-6)


def test_a_manifest_or_labels_file_not_in_utf8_is_a_manifest_error(catalogue: Catalogue) -> None:
    # a UnicodeDecodeError escaped, and one such manifest broke the whole catalogue's scan
    source = catalogue.models_dir / "fastestdet"
    broken = catalogue.cache_dir / "latin1net"
    shutil.copytree(source, broken)  # the cache folder made with it
    manifest = (broken / "manifest.yaml").read_text().replace("name: fastestdet", "name: latin1net")
    (broken / "manifest.yaml").write_bytes(manifest.encode() + b"# caf\xe9\n")
    entries, problems = catalogue.scan()
    assert "fastestdet" in entries and [p.field for p in problems] == ["(file)"]
    assert "not UTF-8" in str(problems[0])
