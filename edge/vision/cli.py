"""``s4edge models …`` (the catalogue: list, pull, add, verify, bench, eval, quantize) and ``s4edge detect``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from s4edge.edge.vision.backends import BackendOptions
    from s4edge.edge.vision.catalogue import Catalogue
    from s4edge.edge.vision.types import Detection

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".mjpg", ".mjpeg"}

models_app = typer.Typer(help="The model catalogue: manifests in models/, weights in the cache.", no_args_is_help=True)


@contextmanager
def _clear_errors(*expected: type[Exception]) -> Iterator[None]:
    """Every expected failure becomes one line saying what was wrong, and exit status 1.
    ``expected`` adds the errors of modules only some commands import (a dataset's)."""
    from s4edge.edge.vision.backends import BackendError
    from s4edge.edge.vision.catalogue import CatalogueError
    from s4edge.edge.vision.manifest import ManifestError

    errors: tuple[type[Exception], ...] = (CatalogueError, ManifestError, BackendError, *expected)
    try:
        yield
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _catalogue() -> Catalogue:
    from s4edge.edge.vision.catalogue import Catalogue

    return Catalogue.from_env()


def _options(threads: int | None) -> BackendOptions:
    from s4edge.edge.vision.backends import BackendOptions

    return BackendOptions(threads=threads)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List every model: runtime, decoder family, whether it is cached and its sha256 matches."""
    catalogue = _catalogue()
    entries, problems = catalogue.scan()
    rows: list[dict[str, Any]] = []
    for name, entry in sorted(entries.items()):
        check = catalogue.verify(name)
        manifest = entry.manifest
        rows.append(
            {
                "name": name,
                "runtime": manifest.runtime,
                "family": manifest.decoder.family,
                "quantization": manifest.quantization,
                "cached": check.cached,
                "shipped": check.shipped,
                "sha_ok": check.ok,
            }
        )
    if as_json:
        _print_json({"models": rows, "errors": [str(p) for p in problems]})
        return
    table = Table(title=f"models ({catalogue.models_dir}; cache {catalogue.cache_dir})")
    table.add_column("name", no_wrap=True)  # the name is what a user types next: never cut it
    for column in ("runtime", "family", "quantization", "weights", "sha256"):
        table.add_column(column)
    for row in rows:
        weights = "shipped" if row["shipped"] else "cached" if row["cached"] else "not pulled"
        sha = "verified" if row["sha_ok"] else ("-" if not row["cached"] else "[red]MISMATCH[/red]")
        table.add_row(row["name"], row["runtime"], row["family"], row["quantization"], weights, sha)
    console = Console()
    console.print(table)
    for problem in problems:
        console.print(f"[red]broken manifest[/red] {problem}", markup=True, highlight=False)


@models_app.command("pull")
def pull(
    name: str = typer.Argument(..., help="Model name (a folder of models/)."),
    source: Path | None = typer.Option(
        None, "--from", help="Local folder holding the weights (air-gapped sites); default $S4EDGE_MODEL_MIRROR."
    ),
) -> None:
    """Copy (or download) a model's weights into the cache; a sha256 mismatch is refused."""
    with _clear_errors():
        path = _catalogue().pull(name, source)
    typer.echo(f"{name}: {path} (sha256 ok)")


@models_app.command("verify")
def verify(
    name: str | None = typer.Argument(None, help="One model; default: every cached model."),
    sha_only: bool = typer.Option(
        False, "--sha-only", help="Check only the weights' sha256: no load, no inference (fast; for scripts)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of lines."),
) -> None:
    """Will the model run? Checks the weights' sha256, then loads each model with its runtime, checks
    its input, outputs, quantization and labels against the manifest and runs it once on a grey frame.
    Exit 1 when a check fails or a manifest is broken."""
    from s4edge.edge.vision.verify import verify_model

    catalogue = _catalogue()
    with _clear_errors():
        entries, broken = catalogue.scan()
        names = [name] if name else sorted(entries)
        reports = [verify_model(catalogue, n, load=not sha_only) for n in names]
    # `models list` shows broken manifests too: a model nobody can load; an uncached one fails only when named
    failed = bool(broken and not name) or any(r.failed or (name and not r.cached) for r in reports)
    if as_json:
        _print_json(
            {
                "models": [
                    {
                        "name": r.name,
                        "cached": r.cached,
                        "failed": r.failed,
                        "checks": [asdict(c) for c in r.checks],
                        "not_run": list(r.not_run),
                    }
                    for r in reports
                ],
                "errors": [] if name else [str(e) for e in broken],
            }
        )
    else:
        for error in [] if name else broken:
            typer.echo(f"broken manifest: {error}")
        for report in reports:
            _print_verification(report, sha_only)
    if failed:
        raise typer.Exit(1)


def _print_verification(report: Any, sha_only: bool) -> None:
    if not report.cached:
        typer.echo(f"{report.name}: not cached; run `s4edge models pull {report.name}`")
        return
    verdict = "sha256 ok, not loaded (--sha-only)" if sha_only else "ok"
    typer.echo(f"{report.name}: " + (f"FAIL ({report.failed})" if report.failed else verdict))
    for check in report.checks:
        typer.echo(
            f"  {check.status.upper() if check.status == 'fail' else check.status:<5} {check.name:<13}{check.detail}"
        )
        if check.remedy and check.status != "pass":
            typer.echo(f"  {'':<5} {'':<13}fix: {check.remedy}")
    if report.not_run:
        typer.echo(f"  not run: {', '.join(report.not_run)} (they need {report.failed} to pass)")


@models_app.command("bench")
def bench(
    name: str = typer.Argument(..., help="Model name from `s4edge models list`."),
    runs: int = typer.Option(100, "--runs", min=1, help="Timed runs of each stage (count)."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed runs first, to warm caches and allocators (count)."),
    image: Path | None = typer.Option(
        None, "--image", help="Frame to run on (an image file); default: a fixed synthetic 640×480 frame."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Inference threads (count); default: every core this process may use but one."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Latency percentiles of the raw model run (infer) and of the whole detect()."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from s4edge.edge.vision.detector import Detector
    from s4edge.edge.vision.evaluate import DatasetError, time_detector

    with _clear_errors(DatasetError):
        detector = Detector.from_catalogue(_catalogue(), name, _options(threads))
        frame = _read_image(image) if image else np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
        with Progress(
            TextColumn(f"bench {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=as_json,
        ) as progress:
            task = progress.add_task("runs", total=runs)
            latency = time_detector(detector, frame, runs, warmup, on_run=lambda: progress.advance(task))
    report = {
        "model": name,
        "sha256": detector.model_ref.sha256,
        "runtime": detector.manifest.runtime,
        **asdict(latency),
    }
    if as_json:
        _print_json(report)
        return
    table = Table(title=f"{name}: {runs} runs (ms)")
    table.add_column("stage")
    for key in latency.infer_ms:
        table.add_column(key, justify="right")
    table.add_row("infer", *(f"{v:.2f}" for v in latency.infer_ms.values()))
    table.add_row("detect", *(f"{v:.2f}" for v in latency.detect_ms.values()))
    Console().print(table)


@models_app.command("eval")
def eval_model(
    name: str = typer.Argument(..., help="Model name from `s4edge models list`."),
    data: Path = typer.Option(..., "--data", help="YOLO-format folder: images/…, labels/… (class cx cy w h)."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Inference threads (count); default: every core this process may use but one."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """mAP@0.5 and mAP@0.5:0.95, overall and per class (COCO evaluation)."""
    from s4edge.edge.vision.detector import Detector
    from s4edge.edge.vision.evaluate import EVAL_SCORE_THRESHOLD, DatasetError, evaluate

    with _clear_errors(DatasetError):
        detector = Detector.from_catalogue(_catalogue(), name, _options(threads), EVAL_SCORE_THRESHOLD)
        report = evaluate(detector, data)
    if as_json:
        _print_json(report.to_dict())
        return
    table = Table(title=f"{name} on {data}: {report.images} images, {report.instances} objects")
    for column in ("class", "instances", "AP@0.5", "AP@0.5:0.95"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for score in report.classes:
        table.add_row(score.label, str(score.instances), f"{score.ap50:.3f}", f"{score.ap50_95:.3f}")
    table.add_row("[bold]all[/bold]", str(report.instances), f"{report.map50:.3f}", f"{report.map50_95:.3f}")
    Console().print(table)
    if report.not_scored:
        classes = ", ".join(str(c) for c in sorted(report.not_scored))
        typer.echo(
            f"not scored: {sum(report.not_scored.values())} objects of classes {classes}, beyond the "
            f"{len(detector.labels)} labels of {name}"
        )


@models_app.command("quantize")
def quantize(
    name: str = typer.Argument(..., help="Model name from `s4edge models list`."),
    calib: Path = typer.Option(..., "--calib", help="Folder of calibration photos, ideally from the site."),
    out_name: str | None = typer.Option(None, "--out-name", help="Name of the new model; NAME-int8 by default."),
    data: Path | None = typer.Option(
        None, "--data", help="Labelled folder to compare mAP before and after (default: none, no mAP comparison)."
    ),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed runs per model for the speed comparison."),
    force: bool = typer.Option(False, "--force", help="Replace a model of the new name that is in your catalogue."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Static INT8 (QDQ, per-channel) quantization of a float32 ONNX model into the cache, with a generated manifest."""
    from s4edge.edge.vision.evaluate import DatasetError
    from s4edge.edge.vision.quantize import quantize_model

    with _clear_errors(DatasetError):
        report = quantize_model(_catalogue(), name, calib, out_name, data, runs, force)
    summary = report.to_dict()
    if as_json:
        _print_json(summary)
        return
    typer.echo(f"{report.quantized}: sha256 {report.sha256}, {report.calibration_images} calibration images")
    for model in (report.source, report.quantized):
        line = f"  {model}: {report.size_bytes[model]} bytes, infer p50 {report.latency[model].infer_ms['p50']:.2f} ms"
        if report.map50 is not None and report.map50_95 is not None:
            line += f", mAP@0.5 {report.map50[model]:.3f}, mAP@0.5:0.95 {report.map50_95[model]:.3f}"
        typer.echo(line)
    typer.echo(f"  speed-up (fp32 p50 / int8 p50): {report.speedup_infer_p50:.2f}x")


@models_app.command("add")
def add_model(
    file: Path = typer.Argument(..., help="The weight file: .onnx or .tflite."),
    name: str = typer.Option(..., "--name", help="The model's name in the catalogue (lower-case, digits, . _ -)."),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="Class names, one per line; default: the file's metadata, else the decoder family's, else class_N.",
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="FIELD=VALUE for a manifest field the graph cannot tell (--set input.colour=BGR); repeatable."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a model of this name that you added before."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Inspect a model, guess its decoder family from the output shapes, and add it with a manifest to
    your catalogue (the model cache). When it cannot tell, it lists what it found and the fields to --set."""
    from s4edge.edge.vision import intake as intake_module
    from s4edge.edge.vision.inspection import InspectionError

    catalogue = _catalogue()
    with _clear_errors(InspectionError, intake_module.IntakeError):
        intake_module.check_name(name)
        catalogue.ensure_addable(name, force)
        intake = intake_module.draft(file, name, labels, intake_module.parse_sets(sets))
        entry = None if intake.missing else intake_module.add(catalogue, intake, force)
    report = _intake_report(intake, entry.folder if entry else None)
    if as_json:
        _print_json(report)
    else:
        _print_intake(report)
    if entry is None:
        typer.echo(f"error: cannot tell {', '.join(intake.missing)} of {file}; nothing was added", err=True)
        raise typer.Exit(1)


def _intake_report(intake: Any, folder: Path | None) -> dict[str, Any]:
    graph = intake.graph

    def tensor(info: Any) -> dict[str, Any]:
        found = {"name": info.name, "shape": list(info.shape), "dtype": info.dtype}
        return found | ({"scale": info.scale, "zero_point": info.zero_point} if info.scale else {})

    return {
        "name": intake.name,
        "added": folder is not None,
        "folder": str(folder) if folder else None,
        "sha256": graph.sha256,
        "runtime": graph.runtime,
        "inputs": [tensor(i) for i in graph.inputs],
        "layout": graph.layout,
        "outputs": [tensor(o) for o in graph.outputs],
        "quantization": graph.quantization,
        "quantization_evidence": graph.quantization_evidence,
        "family": intake.guess.family,
        "evidence": intake.guess.evidence,
        "labels": f"{len(intake.labels)} from {intake.labels_from}",
        "assumed": intake.assumed,
        "missing": intake.missing,
        "manifest": intake.draft,
    }


def _print_intake(report: dict[str, Any]) -> None:
    def shape(dims: list[int | None]) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"

    def tensor(t: dict[str, Any]) -> str:
        quantized = f" (scale {t['scale']:.6g}, zero point {t['zero_point']})" if "scale" in t else ""
        return f"{t['name']} {shape(t['shape'])} {t['dtype']}{quantized}"

    head = f"added to {report['folder']}" if report["added"] else "found, not added"
    typer.echo(f"{report['name']}: {head} ({report['runtime']}, sha256 {report['sha256']})")
    for info in report["inputs"]:
        typer.echo(f"  input         {tensor(info)}, {report['layout'] or 'layout unknown'}")
    for info in report["outputs"]:
        typer.echo(f"  output        {tensor(info)}")
    typer.echo(f"  quantization  {report['quantization']}: {report['quantization_evidence']}")
    typer.echo(f"  family        {report['family'] or 'unknown'}: {report['evidence']}")
    typer.echo(f"  labels        {report['labels']}")
    for note in report["assumed"]:
        typer.echo(f"  assumed       {note}")
    for field in report["missing"]:
        typer.echo(f"  fill in       {field}")
    if report["missing"]:
        families = "|".join(_known_families())
        sets = " ".join(
            f"--set {f}=" + (f"{{{families}}}" if f == "decoder.family" else "…") for f in report["missing"]
        )
        typer.echo(f"Run again with {sets} (and --set for any assumed field that is wrong).")
    elif report["assumed"]:
        typer.echo("Check the assumed fields; correct any with --set FIELD=VALUE and --force.")
    if report["added"]:
        typer.echo(f"Try it: s4edge detect IMAGE --model {report['name']}")


def _known_families() -> list[str]:
    from s4edge.edge.vision.decoders import known_families

    return known_families()


def _read_image(path: Path) -> Any:
    import cv2

    from s4edge.edge.vision.evaluate import DatasetError

    frame = cv2.imread(str(path))
    if frame is None:
        raise DatasetError(f"{path}: not a readable image")
    return frame


def _frames(path: Path, every: int) -> Iterator[tuple[str, int | None, Any]]:
    """(source, frame index or None, BGR frame) for an image, a folder of images or a video; the
    frame of a folder's image that cannot be read is None."""
    import cv2

    from s4edge.edge.vision.evaluate import IMAGE_SUFFIXES, DatasetError

    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        for image in images:  # one unreadable photo is reported by the caller, not the end of the others
            yield str(image), None, cv2.imread(str(image))
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise DatasetError(f"{path}: cannot open the video")
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % every == 0:
                    yield str(path), index, frame
                index += 1
        finally:
            capture.release()
    elif path.is_file():
        yield str(path), None, _read_image(path)
    else:
        raise DatasetError(f"{path}: no such image, folder or video")


def _detection_dict(det: Detection) -> dict[str, Any]:
    return {
        "class_id": det.class_id,
        "label": det.label,
        "score": round(det.score, 4),
        "box": [round(v, 4) for v in det.box],
    }


def detect(
    path: Path = typer.Argument(..., help="An image, a folder of images, or a video file."),
    model: str = typer.Option("fastestdet", "--model", help="Model name from `s4edge models list`."),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Lowest score (0 to 1) a detection needs; default: the manifest's."
    ),
    every: int = typer.Option(1, "--every", min=1, help="For a video: run on every Nth frame."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Run a detector on images or a video and print class, score and box (normalised x1 y1 x2 y2)."""
    from s4edge.edge.vision.detector import Detector
    from s4edge.edge.vision.evaluate import DatasetError

    results: list[dict[str, Any]] = []
    unreadable = 0
    with _clear_errors(DatasetError):
        detector = Detector.from_catalogue(_catalogue(), model, score_threshold=threshold)
        for source, index, frame in _frames(path, every):
            if frame is None:  # an image of a folder: said, and the rest still run
                unreadable += 1
                results.append({"source": source, "frame": index, "error": "not a readable image"})
                typer.echo(f"error: {source}: not a readable image; skipped", err=True)
                continue
            found = detector.detect(frame)
            results.append({"source": source, "frame": index, "detections": [_detection_dict(d) for d in found]})
            if not as_json:
                where = source if index is None else f"{source}#{index}"
                for d in found:
                    box = " ".join(f"{v:.3f}" for v in d.box)
                    typer.echo(f"{where}\t{d.label}\t{d.score:.2f}\t{box}")
    if as_json:
        _print_json({"model": detector.model_ref.model_dump(), "results": results})
    if unreadable:
        raise typer.Exit(1)
