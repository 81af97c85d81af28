"""``s4edge models add``: a researcher's model file becomes a catalogue entry that runs.

The shared models are checked against the manifests written for them by hand; YOLOv8,
YOLOX and SSD heads are ONNX graphs built here whose outputs are constants, so a known
box must come out of the real detector at the other end.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.vision.backends import TensorInfo
from s4edge.edge.vision.catalogue import default_models_dir
from s4edge.edge.vision.decoders import bind
from s4edge.edge.vision.decoders.guess import guess_family
from s4edge.edge.vision.manifest import DecoderSpec, InputSpec

onnx = pytest.importorskip("onnx", reason="building test graphs needs the onnx package (s4edge[research])")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

runner = CliRunner()
LABELS = ["person", "car", "forklift"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("S4EDGE_MODELS_DIR", raising=False)
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def add(*args: str):
    return runner.invoke(app, ["models", "add", *args])


def add_json(*args: str) -> dict:
    result = add(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def detect(image: Path, model: str) -> list[dict]:
    result = runner.invoke(app, ["detect", str(image), "--model", model, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"][0]["detections"]


def constant_head(
    path: Path,
    outputs: dict[str, np.ndarray],
    input_shape: tuple[int | str, ...] = (1, 3, 320, 320),
    qdq: bool = False,
    metadata: dict[str, str] | None = None,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """An ONNX graph whose outputs are constants plus 0 × sum(input): the shapes of a real head,
    values chosen by the test."""
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    nodes = []
    source = "images"
    if input_type != TensorProto.FLOAT:  # an integer input, taken as it is
        nodes.append(helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT))
        source = "images_f"
    if qdq:  # the shape of onnxruntime's static quantization at the input
        initializers += [
            numpy_helper.from_array(np.array(1 / 255, np.float32), "in_scale"),
            numpy_helper.from_array(np.array(0, np.uint8), "in_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["images", "in_scale", "in_zero"], ["images_q"]),
            helper.make_node("DequantizeLinear", ["images_q", "in_scale", "in_zero"], ["images_dq"]),
        ]
        source = "images_dq"
    nodes += [
        helper.make_node("ReduceSum", [source], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
    ]
    graph_outputs = []
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        "constant_head",
        [helper.make_tensor_value_info("images", input_type, list(input_shape))],
        graph_outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def yolov8_head(classes: int = 3, cells: int = 2100) -> np.ndarray:
    """[1, 4 + C, N] with one box: centre (160, 120), 64 × 96 input pixels, class 2 at 0.9."""
    out = np.zeros((1, 4 + classes, cells), np.float32)
    out[0, :4, 123] = [160, 120, 64, 96]
    out[0, 4 + 2, 123] = 0.9
    return out


def frame(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 256, (480, 640, 3), np.uint8))
    return path


# A 640×480 frame letterboxed into 320×320: half size, 40 rows of border above and below.
# Input box x 128..192, y 72..168 → frame x (128 / 0.5) / 640, y (72 − 40) / 0.5 / 480.
YOLO_BOX = [0.4, (72 - 40) / 0.5 / 480, 0.6, (168 - 40) / 0.5 / 480]


def test_a_yolov8_graph_is_added_and_detects_its_box_end_to_end(cache: Path, tmp_path: Path) -> None:
    model = constant_head(tmp_path / "yolo.onnx", {"output0": yolov8_head()})
    labels = tmp_path / "site.names"
    labels.write_text("\n".join(LABELS) + "\n")
    report = add_json(str(model), "--name", "site-yolo", "--labels", str(labels))
    assert report["added"] and report["family"] == "yolov8"
    assert "2100 = the cells of strides 8, 16, 32 on 320×320" in report["evidence"]
    manifest = yaml.safe_load((cache / "site-yolo" / "manifest.yaml").read_text())
    assert manifest["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["input"].items() >= {"shape": [1, 3, 320, 320], "layout": "NCHW", "dtype": "float32"}.items()
    assert manifest["input"]["resize"] == "letterbox" and manifest["input"]["colour"] == "RGB"
    assert manifest["outputs"] == [{"name": "output0", "shape": [1, 7, 2100]}]
    assert (cache / "site-yolo" / "labels.txt").read_text().split() == LABELS
    assert (cache / "site-yolo" / "yolo.onnx").read_bytes() == model.read_bytes()

    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)["models"]
    row = next(r for r in listed if r["name"] == "site-yolo")
    assert row["family"] == "yolov8" and row["cached"] and row["sha_ok"]

    [found] = detect(frame(tmp_path), "site-yolo")
    assert found["label"] == "forklift" and found["score"] == pytest.approx(0.9)
    assert found["box"] == pytest.approx(YOLO_BOX, abs=2e-3)


def test_a_yolox_graph_decodes_its_grid_cell(cache: Path, tmp_path: Path) -> None:
    out = np.zeros((1, 2100, 5 + 3), np.float32)
    # Rows 2000.. are the 10 × 10 cells of stride 32 (40² + 20² of strides 8 and 16 before them);
    # row 2055 is cell (5, 5): centre (0.5 + 5) × 32 = 176, size exp(ln 2) × 32 = 64, so 144..208.
    out[0, 2055] = [0.5, 0.5, np.log(2), np.log(2), 1.0, 0, 0.8, 0]
    model = constant_head(tmp_path / "yolox.onnx", {"output": out})
    report = add_json(str(model), "--name", "yolox-s")
    assert report["family"] == "yolox" and report["manifest"]["input"]["scale"] == 1.0
    assert any(note.startswith("decoder.options.decoded") for note in report["assumed"])
    [found] = detect(frame(tmp_path), "yolox-s")
    assert found["label"] == "class_1" and found["score"] == pytest.approx(0.8)
    expected = [144 / 0.5 / 640, (144 - 40) / 0.5 / 480, 208 / 0.5 / 640, (208 - 40) / 0.5 / 480]
    assert found["box"] == pytest.approx(expected, abs=2e-3)


def test_ssd_outputs_are_put_in_postprocess_order_by_their_names(cache: Path, tmp_path: Path) -> None:
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, 0] = [0.25, 0.1, 0.75, 0.5]  # ymin, xmin, ymax, xmax
    classes, scores = np.zeros((1, 10), np.float32), np.zeros((1, 10), np.float32)
    classes[0, 0], scores[0, 0] = 1, 0.8
    heads = {  # the file lists them out of order
        "TFLite_Detection_PostProcess:2": scores,
        "TFLite_Detection_PostProcess:3": np.array([1], np.float32),
        "TFLite_Detection_PostProcess": boxes,
        "TFLite_Detection_PostProcess:1": classes,
    }
    model = constant_head(tmp_path / "ssd.onnx", heads, (1, 300, 300, 3))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    report = add_json(str(model), "--name", "ssd-site", "--labels", str(labels))
    assert report["family"] == "ssd" and report["layout"] == "NHWC"
    names = [o["name"] for o in report["manifest"]["outputs"]]
    assert names == [f"TFLite_Detection_PostProcess{s}" for s in ("", ":1", ":2", ":3")]
    [found] = detect(frame(tmp_path), "ssd-site")
    assert found["label"] == "car" and found["box"] == pytest.approx([0.1, 0.25, 0.5, 0.75], abs=1e-3)


def test_a_qdq_graph_reports_static_int8_and_its_input_scale(cache: Path, tmp_path: Path) -> None:
    model = constant_head(tmp_path / "yolo_int8.onnx", {"output0": yolov8_head()}, qdq=True)
    report = add_json(str(model), "--name", "yolo-int8")
    assert report["quantization"] == "int8-static"
    assert "scale 0.00392157, zero point 0" in report["quantization_evidence"]
    assert report["manifest"]["quantization"] == "int8-static"


def test_a_dynamic_input_takes_its_size_and_labels_from_ultralytics_metadata(cache: Path, tmp_path: Path) -> None:
    metadata = {"imgsz": "[320, 320]", "names": "{0: 'person', 1: 'car', 2: 'forklift'}"}
    model = constant_head(tmp_path / "dyn.onnx", {"output0": yolov8_head()}, ("batch", 3, "h", "w"), metadata=metadata)
    report = add_json(str(model), "--name", "dyn")
    assert report["manifest"]["input"]["shape"] == [1, 3, 320, 320]
    assert report["labels"] == "3 from the file's metadata"
    [found] = detect(frame(tmp_path), "dyn")
    assert found["label"] == "forklift"


def test_when_it_cannot_tell_it_says_what_it_found_and_what_to_fill_in(cache: Path, tmp_path: Path) -> None:
    model = constant_head(tmp_path / "dyn.onnx", {"output0": yolov8_head()}, (1, 3, "h", "w"))
    result = add(str(model), "--name", "dyn")
    assert result.exit_code == 1
    assert "output0 [1, 7, 2100] float32" in result.stdout  # found
    assert "fill in       input.shape" in result.stdout
    assert "--set input.shape=" in result.stdout
    assert "nothing was added" in result.stderr
    assert not (cache / "dyn").exists()
    filled = add(str(model), "--name", "dyn", "--set", "input.shape=[1,3,320,320]")
    assert filled.exit_code == 0, filled.output
    assert detect(frame(tmp_path), "dyn")[0]["box"] == pytest.approx(YOLO_BOX, abs=2e-3)


def test_an_unknown_head_asks_for_the_family_and_runs_once_named(cache: Path, tmp_path: Path) -> None:
    model = constant_head(tmp_path / "odd.onnx", {"scores": np.zeros((1, 10), np.float32)})
    result = add(str(model), "--name", "odd")
    assert result.exit_code == 1
    assert "no family I know reads 1 output(s) shaped [1, 10]" in result.stdout
    assert "--set decoder.family={fastestdet|mediapipe_pose|ssd|yolov8|yolox}" in result.stdout
    named = add(str(model), "--name", "odd", "--set", "decoder.family=yolov8")
    assert named.exit_code == 1 and "decoder: yolov8: expected [1, 4 + classes, N]" in named.stderr
    assert not (cache / "odd").exists()


def test_a_yolov5_style_head_is_named_and_not_guessed(cache: Path, tmp_path: Path) -> None:
    model = constant_head(tmp_path / "v5.onnx", {"output0": np.zeros((1, 3 * 2100, 85), np.float32)})
    result = add(str(model), "--name", "v5")
    assert result.exit_code == 1 and "YOLOv5-style head" in result.stdout


def tflite_tensor(shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo("out", shape, "float32")


def test_guess_tells_yolov8_from_yolox_and_flags_tflite_boxes() -> None:
    tflite = guess_family([tflite_tensor((1, 84, 8400))], 640, 640, "tflite")
    assert tflite.family == "yolov8" and tflite.options == {"normalized": True} and tflite.classes == 80
    transposed = guess_family([tflite_tensor((1, 8400, 84))], 640, 640, "onnx", classes_hint=80)
    assert transposed.family is None and "transposed" in transposed.evidence
    assert guess_family([tflite_tensor((1, 8400, 85))], 640, 640, "onnx", classes_hint=80).family == "yolox"
    p6 = guess_family([tflite_tensor((1, 8500, 85))], 640, 640, "onnx")
    assert p6.family == "yolox" and p6.options == {"strides": [8, 16, 32, 64]}
    assert guess_family([tflite_tensor((1, 8500, 85))], 1280, 1280, "onnx").family is None  # fits no stride set


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: d / "model.pt", [], "unknown extension '.pt'"),
        (lambda d: d / "text.onnx", [], "not a loadable ONNX model"),
        (lambda d: d / "cut.tflite", [], "not a loadable TFLite model"),
        (lambda d: d / "renamed.tflite", [], "not a TFLite model (no TFL3 identifier"),
        (
            lambda d: d / "yolo.tflite",
            [],
            "an ONNX model (a protobuf ModelProto), named .tflite; rename it to yolo.onnx",
        ),
        (lambda d: d / "absent.onnx", [], "no such file"),
        (lambda d: d / "yolo.onnx", ["--labels", "missing.txt"], "--labels missing.txt: no such file"),
        (lambda d: d / "yolo.onnx", ["--name", "fastestdet"], "'fastestdet' is a packaged model"),
        (lambda d: d / "yolo.onnx", ["--name", "Site YOLO"], "--name 'Site YOLO': use lower-case"),
        (lambda d: d / "yolo.onnx", ["--set", "sha256=00"], "sha256 comes from the file"),
        (lambda d: d / "yolo.onnx", ["--set", "input.colour=GRB"], "input.colour: Input should be 'BGR' or 'RGB'"),
    ],
)
def test_bad_files_and_arguments_are_refused_in_one_line(cache: Path, tmp_path: Path, make, args, message) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x02torch")
    (tmp_path / "text.onnx").write_text("not a model\n")
    (tmp_path / "renamed.tflite").write_bytes((tmp_path / "text.onnx").read_bytes())
    yolo = constant_head(tmp_path / "yolo.onnx", {"output0": yolov8_head()})
    (tmp_path / "cut.tflite").write_bytes(b"\x00\x00\x00\x00TFL3" + yolo.read_bytes()[:200])
    (tmp_path / "yolo.tflite").write_bytes(yolo.read_bytes())  # it said "no TFL3 identifier", as for a text file
    args = args if "--name" in args else [*args, "--name", "m"]
    result = add(str(make(tmp_path)), *args)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not (cache / "m").exists()


def test_an_existing_name_is_refused_unless_forced(cache: Path, tmp_path: Path) -> None:
    model = constant_head(tmp_path / "yolo.onnx", {"output0": yolov8_head()})
    assert add(str(model), "--name", "mine").exit_code == 0
    again = add(str(model), "--name", "mine")
    assert again.exit_code == 1 and "already in your catalogue" in again.stderr and "--force" in again.stderr
    head = yolov8_head()
    head[0, 4 + 2, 123], head[0, 4 + 0, 123] = 0, 0.7  # now class 0
    changed = constant_head(tmp_path / "yolo.onnx", {"output0": head})
    assert add(str(changed), "--name", "mine", "--force").exit_code == 0
    assert detect(frame(tmp_path), "mine")[0]["label"] == "class_0"
    assert sorted(p.name for p in cache.iterdir()) == ["mine"]  # no staging folder left behind


# Each shared model, with the packaged manifest written for it by hand.
SHARED_MODELS = [
    ("fastestdet/FastestDet.onnx", "fastestdet", "fastestdet"),
    ("fastestdet-tflite/FastestDet_float32.tflite", "fastestdet", "fastestdet-tflite"),
    ("fastestdet-tflite/FastestDet_full_integer_quant.tflite", "fastestdet", "fastestdet-tflite-int8"),
    ("fastestdet-tflite/FastestDet_3out_full_integer_quant.tflite", "fastestdet", "fastestdet-tflite-int8-3out"),
    ("mediapipe-pose/pose_detection.tflite", "mediapipe_pose", "mediapipe-pose"),
]


@pytest.mark.parametrize(("file", "family", "packaged"), SHARED_MODELS)
def test_each_shared_model_is_added_as_its_hand_written_manifest_says(
    cache: Path, shared: Path, file: str, family: str, packaged: str
) -> None:
    path = shared / "models" / file
    if not path.is_file():
        pytest.skip(f"{path} is absent from the model mirror")
    name = f"own-{packaged}"
    report = add_json(str(path), "--name", name)
    assert report["family"] == family
    written = yaml.safe_load((cache / name / "manifest.yaml").read_text())
    expected = yaml.safe_load((default_models_dir() / packaged / "manifest.yaml").read_text())
    assert written["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == expected["sha256"]
    mine, reference = (InputSpec.model_validate(m["input"]) for m in (written, expected))
    for key in ("shape", "layout", "dtype", "colour", "resize", "pad_value"):
        assert getattr(mine, key) == getattr(reference, key), key
    for key in ("scale", "mean", "std"):
        assert getattr(mine, key) == pytest.approx(getattr(reference, key), rel=1e-6), key
    assert (mine.quantization is None) == (reference.quantization is None)
    if mine.quantization and reference.quantization:
        assert mine.quantization.scale == pytest.approx(reference.quantization.scale, rel=1e-6)
        assert mine.quantization.zero_point == reference.quantization.zero_point
    assert written["outputs"] == [o | {"name": w["name"]} for o, w in zip(expected["outputs"], written["outputs"])]
    assert len(written["outputs"]) == len(expected["outputs"])
    ours, theirs = (DecoderSpec.model_validate(m["decoder"]) for m in (written, expected))
    assert bind(ours, "written").options == bind(theirs, "expected").options
    assert (ours.family, ours.score_threshold, ours.nms_iou) == (theirs.family, theirs.score_threshold, theirs.nms_iou)
    assert written["quantization"] == expected["quantization"]  # pose_detection.tflite: fp16 weights

    images = shared / "data/images"
    if not images.is_dir():
        pytest.skip(f"{images} is absent")
    assert runner.invoke(app, ["models", "pull", packaged]).exit_code == 0
    found, hand_written = detect_all(images, name), detect_all(images, packaged)
    assert hand_written, "the packaged model finds something in these photos"
    assert [d["class_id"] for d in found] == [d["class_id"] for d in hand_written]
    np.testing.assert_allclose([d["box"] for d in found], [d["box"] for d in hand_written], atol=1e-3)


def detect_all(folder: Path, model: str) -> list[dict]:
    result = runner.invoke(app, ["detect", str(folder), "--model", model, "--json"])
    assert result.exit_code == 0, result.output
    return [d for frame in json.loads(result.stdout)["results"] for d in frame["detections"]]


@pytest.mark.parametrize("names", ["1+" * 100_000 + "1", "-" * 100_000])
def test_metadata_that_cannot_be_read_is_only_a_missed_hint(cache: Path, tmp_path: Path, names: str) -> None:
    # a RecursionError, or a MemoryError, from reading the names came out as a traceback
    metadata = {"names": names, "imgsz": "[320, 320]"}
    model = constant_head(tmp_path / "meta.onnx", {"output0": yolov8_head()}, metadata=metadata)
    report = add_json(str(model), "--name", "meta", "--labels", str(write_labels(tmp_path)))
    assert report["manifest"]["input"]["shape"] == [1, 3, 320, 320]


def write_labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    return path


def test_a_cache_that_cannot_be_made_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "a-file" / "cache"))
    model = constant_head(tmp_path / "m.onnx", {"output0": yolov8_head()})
    for result in (add(str(model), "--name", "m"), runner.invoke(app, ["models", "pull", "fastestdet-tflite"])):
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # not OSError
        assert "cannot write to the model cache" in result.output and "S4EDGE_MODEL_CACHE" in result.output


def test_verify_fails_on_a_manifest_nobody_can_load(cache: Path) -> None:
    (cache / "broken").mkdir(parents=True)
    (cache / "broken" / "manifest.yaml").write_text("name: broken\nversion: [1]\n", encoding="utf-8")
    result = runner.invoke(app, ["models", "verify"])
    assert result.exit_code == 1 and "broken manifest" in result.output and "broken/manifest.yaml" in result.output


@pytest.mark.parametrize(
    ("shape", "field", "says"),
    [
        ([1, 1, 320, 320], "input.layout", "export the model with a 3-channel input"),
        ([1, 320, 320, 3], "input.layout", "layout: NHWC"),  # NHWC declared NCHW: 3 wide
    ],
)
def test_a_model_that_loads_but_cannot_run_is_refused_at_load(
    tmp_path: Path, shape: list[int], field: str, says: str
) -> None:
    # a grey input, or an NHWC one declared NCHW: loaded, swapped in live as a success, and
    # then every frame failed while the old model was gone
    from s4edge.edge.vision.catalogue import Catalogue, sha256_file
    from s4edge.edge.vision.detector import Detector
    from s4edge.edge.vision.manifest import ManifestError

    weights = constant_head(tmp_path / "grey.onnx", {"head": np.zeros((1, 85, 20, 20))}, tuple(shape))
    folder = tmp_path / "models" / "grey"
    folder.mkdir(parents=True)
    (folder / "grey.onnx").write_bytes(weights.read_bytes())
    manifest = {
        "name": "grey", "version": "1", "file": "grey.onnx", "sha256": sha256_file(weights), "runtime": "onnx",
        "labels": ["person"], "licence": "MIT",
        "input": {"name": "images", "shape": shape, "layout": "NCHW", "colour": "BGR", "scale": 1},
        "outputs": [{"name": "head", "shape": [1, 85, 20, 20]}], "decoder": {"family": "fastestdet"},
    }  # fmt: skip
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    catalogue = Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    with pytest.raises(ManifestError) as caught:
        Detector.from_catalogue(catalogue, "grey")
    assert caught.value.field == field and says in caught.value.problem


def test_a_labels_file_keeps_each_class_on_its_own_line(tmp_path: Path) -> None:
    from s4edge.edge.vision.intake import read_labels

    path = tmp_path / "labels.txt"
    path.write_text("person\n\ncar\n\n", encoding="utf-8")  # class 1 unused
    assert read_labels(path) == ["person", "class_1", "car"]


def test_an_int8_onnx_input_is_drafted_to_take_every_pixel(cache: Path, tmp_path: Path) -> None:
    # scale 1, mean 0: every pixel above 127 became 127, and the fields were not even listed as assumed
    model = constant_head(tmp_path / "i8.onnx", {"output0": yolov8_head()}, input_type=TensorProto.INT8)
    report = add_json(str(model), "--name", "i8", "--labels", str(write_labels(tmp_path)))
    assert (report["manifest"]["input"]["scale"], report["manifest"]["input"]["mean"]) == (1.0, [128.0] * 3)
    assert any("input.mean" in line for line in report["assumed"])


@pytest.mark.parametrize(
    ("dtype", "scale", "mean", "says"),
    [
        ("uint8", 1 / 255, 0, "turn pixels 0..255 into 0..1, not 0..255; set scale: 1 and mean: [0, 0, 0]"),
        ("int8", 1, 0, "into 0..255, not -128..127; set scale: 1 and mean: [128, 128, 128]"),
    ],
)
def test_an_integer_onnx_input_whose_pixels_would_not_fit_is_refused_at_load(
    tmp_path: Path, dtype: str, scale: float, mean: float, says: str
) -> None:
    # a hand-written manifest kept FastestDet's 1/255: the uint8 model saw 0s and 1s, a black frame
    from s4edge.edge.vision.catalogue import Catalogue, sha256_file
    from s4edge.edge.vision.detector import Detector
    from s4edge.edge.vision.manifest import ManifestError

    kind = TensorProto.UINT8 if dtype == "uint8" else TensorProto.INT8
    weights = constant_head(tmp_path / "int.onnx", {"output0": yolov8_head()}, input_type=kind)
    folder = tmp_path / "models" / "int"
    folder.mkdir(parents=True)
    (folder / "int.onnx").write_bytes(weights.read_bytes())
    manifest = {
        "name": "int", "version": "1", "file": "int.onnx", "sha256": sha256_file(weights), "runtime": "onnx",
        "labels": LABELS, "licence": "MIT",
        "input": {"name": "images", "shape": [1, 3, 320, 320], "layout": "NCHW", "colour": "RGB", "dtype": dtype,
                  "scale": scale, "mean": [mean] * 3},
        "outputs": [{"name": "output0", "shape": [1, 7, 2100]}], "decoder": {"family": "yolov8"},
    }  # fmt: skip
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        Detector.from_catalogue(Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache"), "int")
    assert caught.value.field == "input.scale" and says in caught.value.problem


def test_a_float16_input_is_refused_saying_how_to_export_it(cache: Path, tmp_path: Path) -> None:
    # it asked for --set input.dtype=…, and refused every value
    model = constant_head(tmp_path / "f16.onnx", {"output0": yolov8_head()}, input_type=TensorProto.FLOAT16)
    result = add(str(model), "--name", "f16")
    assert result.exit_code == 1 and "export it again with float32 inputs" in result.output
    assert "--set input.dtype" not in result.output and not (cache / "f16").exists()


def test_a_fastestdet_of_dynamic_size_loads_at_a_wide_input(tmp_path: Path) -> None:
    # its outputs' sizes are known only once it runs: the load check decoded a 1 × 1 blank map
    # and refused a 512 × 288 input as a grid that does not tile it
    from s4edge.edge.vision.catalogue import Catalogue, sha256_file
    from s4edge.edge.vision.detector import Detector

    weights = numpy_helper.from_array(np.zeros((85, 3, 16, 16), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["out"], kernel_shape=[16, 16], strides=[16, 16])],
        "fastestdet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 85, "gh", "gw"])],
        [weights],
    )
    folder = tmp_path / "models" / "wide"
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), folder / "w.onnx")
    manifest = yaml.safe_load((default_models_dir() / "fastestdet" / "manifest.yaml").read_text())
    manifest.pop("url")
    manifest.update(name="wide", file="w.onnx", labels=["person"] * 80, sha256=sha256_file(folder / "w.onnx"))
    manifest["input"].update(name="input", shape=[1, 3, 288, 512])
    manifest["outputs"] = [{"shape": [1, 85, 18, 32]}]
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    catalogue = Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    detector = Detector.from_catalogue(catalogue, "wide")
    assert detector.detect(np.full((720, 1280, 3), 114, np.uint8)) == []


def test_a_dynamic_input_asks_for_its_size_alone(cache: Path, tmp_path: Path) -> None:
    # a grid head is matched against the input size: with none, it also asked for decoder.family
    # and decoder.options, which the next run guesses from the size by itself
    head = np.zeros((1, 8, 20, 20), np.float32)  # FastestDet's map: 5 + 3 channels on a 20 × 20 grid
    model = constant_head(tmp_path / "grid.onnx", {"head": head}, (1, 3, "h", "w"))
    result = add(str(model), "--name", "grid", "--labels", str(write_labels(tmp_path)))
    assert result.exit_code == 1
    assert "fill in       input.shape" in result.stdout and "fill in       decoder" not in result.stdout
    assert "Run again with --set input.shape=… (" in result.stdout
    assert "guessed again once input.shape is set" in result.stdout
    filled = add_json(str(model), "--name", "grid", "--labels", str(write_labels(tmp_path)), "--set",
                      "input.shape=[1,3,320,320]")  # fmt: skip
    assert filled["family"] == "fastestdet"


def test_a_size_set_against_a_fixed_input_is_refused_in_one_line(cache: Path, tmp_path: Path) -> None:
    # the graph's own 320 × 320 was overridden: no grid tiled the size set, and it asked for decoder.family
    model = constant_head(tmp_path / "grid.onnx", {"head": np.zeros((1, 8, 20, 20), np.float32)})
    result = add(str(model), "--name", "big", "--set", "input.shape=[1,3,330,330]")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "--set input.shape=[1, 3, 330, 330]: grid.onnx's input images is [1, 3, 320, 320]" in result.stderr
    assert "decoder.family" not in result.output and not (cache / "big").exists()


def test_a_misspelt_option_is_not_suggested_again(cache: Path, tmp_path: Path) -> None:
    # it ended with "--set decoder.options.normalised=…": set the key it had just refused
    model = constant_head(tmp_path / "yolo.onnx", {"output0": yolov8_head()})
    result = add(str(model), "--name", "m", "--set", "decoder.options.normalised=true")
    assert result.exit_code == 1 and "did you mean normalized?" in result.stderr
    assert result.stderr.rstrip().endswith("; drop --set decoder.options.normalised"), result.stderr
