"""Build a short MJPG demo clip from the real photos in ../shared/data/images, for a
machine where ../shared/data/video is absent.

Each photo gets a slow pan and zoom (a virtual camera moving over it); one photo is
held still for a stretch, so the motion gate has a static scene to skip. The clip goes
to a cache folder, never into the repo (the photos are third-party data)::

    .venv/bin/python scripts/make_demo_clip.py            # → ~/.cache/s4edge/demo/…avi
    .venv/bin/python scripts/make_demo_clip.py --out /tmp/clip.avi --seconds-per-image 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "images"
DEFAULT_OUT = Path.home() / ".cache" / "s4edge" / "demo" / "demo_people_640x480_15fps.avi"
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def view(image: np.ndarray, size: tuple[int, int], zoom: float, cx: float, cy: float) -> np.ndarray:
    """The part of ``image`` a camera sees at ``zoom`` (1 = whole frame) centred on (cx, cy)."""
    width, height = size
    h, w = image.shape[:2]
    # the largest crop of the output's aspect ratio, then narrowed by the zoom
    crop_w = min(w, h * width / height) / zoom
    crop_h = crop_w * height / width
    x0 = float(np.clip(cx * w - crop_w / 2, 0, w - crop_w))
    y0 = float(np.clip(cy * h - crop_h / 2, 0, h - crop_h))
    # an affine map keeps sub-pixel motion smooth, where integer crops would jitter
    matrix = np.array([[width / crop_w, 0, -x0 * width / crop_w], [0, height / crop_h, -y0 * height / crop_h]])
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def build(
    images: list[Path], out: Path, size: tuple[int, int], fps: float, seconds_per_image: float, static_s: float
) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise SystemExit(f"{out}: OpenCV cannot write an MJPG .avi here")
    frames = 0
    per_image = max(2, round(seconds_per_image * fps))
    try:
        for index, path in enumerate(images):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                print(f"skipped {path.name}: not a readable image", file=sys.stderr)
                continue
            direction = 1 if index % 2 == 0 else -1
            for i in range(per_image):
                t = i / (per_image - 1)
                zoom = 1.0 + 0.25 * (t if direction > 0 else 1 - t)
                writer.write(view(image, size, zoom, 0.5 + direction * 0.08 * (t - 0.5), 0.5))
                frames += 1
            if index == len(images) // 2 and static_s > 0:  # the still stretch, mid-clip
                still = view(image, size, 1.0, 0.5, 0.5)
                for _ in range(round(static_s * fps)):
                    writer.write(still)
                    frames += 1
    finally:
        writer.release()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="Folder of photos (default: ../shared/data/images)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output .avi (default: the user cache)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seconds-per-image", type=float, default=2.0)
    parser.add_argument("--static-seconds", type=float, default=4.0, help="A motionless stretch for the motion gate")
    args = parser.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"{args.images}: no such folder of photos")
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)
    if not images:
        raise SystemExit(f"{args.images}: no {'/'.join(SUFFIXES)} photos in it")
    frames = build(images, args.out, (args.width, args.height), args.fps, args.seconds_per_image, args.static_seconds)
    print(f"{args.out}: {frames} frames, {frames / args.fps:.1f} s at {args.fps:g} fps")


if __name__ == "__main__":
    main()
