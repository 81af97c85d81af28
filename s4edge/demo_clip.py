"""The demo's replay clip, built at run time from real photos of people.

The package ships FastestDet's sample photos (``demo_frames/``, BSD-3-Clause); the
demo turns them into a short MJPG clip in its working folder. Each photo gets a slow
pan and zoom (a virtual camera moving over it); one photo is held still for a stretch,
so the motion gate has a static scene to skip. Run as a module to build a clip from
any folder of photos::

    python -m s4edge.demo_clip --out /tmp/clip.avi                 # the packaged photos
    python -m s4edge.demo_clip --images DIR --out /tmp/clip.avi --seconds-per-image 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from s4edge.resources import packaged

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
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
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


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def demo_clip(out: Path) -> Path:
    """The demo clip from the packaged photos: 640×480 at 15 fps, about 14 s."""
    build(photos(packaged("demo_frames")), out, (640, 480), 15.0, seconds_per_image=2.0, static_s=4.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None, help="Folder of photos (default: the packaged ones)")
    parser.add_argument("--out", type=Path, required=True, help="Output .avi")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seconds-per-image", type=float, default=2.0)
    parser.add_argument("--static-seconds", type=float, default=4.0, help="A motionless stretch for the motion gate")
    args = parser.parse_args()
    folder = args.images or packaged("demo_frames")
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such folder of photos")
    images = photos(folder)
    if not images:
        raise SystemExit(f"{folder}: no {'/'.join(SUFFIXES)} photos in it")
    frames = build(images, args.out, (args.width, args.height), args.fps, args.seconds_per_image, args.static_seconds)
    print(f"{args.out}: {frames} frames, {frames / args.fps:.1f} s at {args.fps:g} fps")


if __name__ == "__main__":
    main()
