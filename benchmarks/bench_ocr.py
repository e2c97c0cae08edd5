"""Burned-in text: detection recall on a rendered test set, and de-identification throughput
with OCR on, beside dicognito.

Run: ``.venv/bin/python -m benchmarks.bench_ocr [--variants 8] [--files 400] [--workers 2]``.

Detection: every (clean, with text) pair of :mod:`tasks.sample.ocr_corpus` (real images from
pydicom, nibabel, scikit-image and the SVS fixture; text rendered in varied fonts, sizes,
positions and contrasts) is read frame by frame by :func:`tasks.deid.ocr.find_text`, as the
stage reads it. A line of text is found when the detected boxes, padded as the default profile
pads them, cover at least 90% of its ink's bounding box; an image is found when every line in
every frame is. Image recall counts the images with text in which OCR found (and so blanked) text
at all: such an image is flagged and its text lines touched; "image cleared" counts those whose
every line was found. A clean image is wrongly blanked when any box is found in it.

Throughput: a corpus where a quarter of the files need OCR (the test set written as secondary
captures, half with text) and the rest do not (the sample data and pydicom files bench_deid uses
that no burned-in rule selects), cycled to ``--files``, de-identified by ``deidentify_dicom`` and
by dicognito on the same process pool. Targets: image recall >= 99%, clean images blanked <= 2%,
mira >= 2x dicognito. Writes benchmarks/results/bench_ocr.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from rich.console import Console
from rich.table import Table

from benchmarks.bench_deid import KEY, dicognito_once, load_corpus
from tasks.deid import DeidPolicy, deidentify_dicom
from tasks.deid.ocr import TextBox, find_text
from tasks.deid.pixels import needs_scrubbing
from tasks.sample.ocr_corpus import CorpusImage, corpus, write_dicom

RESULTS = Path(__file__).parent / "results"
POLICY = DeidPolicy.default()
COVERED = 0.9
FILES: list[bytes] = []


def line_found(boxes: list[TextBox], x0: int, y0: int, x1: int, y1: int, shape: tuple) -> bool:
    """Whether the padded boxes cover COVERED of the line's ink bounding box."""
    mask = np.zeros(shape[:2], bool)
    for box in boxes:
        grown = box.padded(POLICY.ocr_pad, shape[0], shape[1])
        mask[grown.y0 : grown.y1, grown.x0 : grown.x1] = True
    return float(mask[y0:y1, x0:x1].mean()) >= COVERED


def evaluate(image: CorpusImage) -> tuple[int, int, int, int]:
    """(lines found, lines, lines touched by a box, frames with any box) for one image."""
    found = touched = boxes_seen = 0
    for index, frame in enumerate(image.frames):
        boxes = find_text(frame)
        boxes_seen += bool(boxes)
        for line in image.lines:
            if line.frame == index:
                found += line_found(boxes, line.x0, line.y0, line.x1, line.y1, frame.shape)
                touched += any(
                    b.x0 < line.x1 and line.x0 < b.x1 and b.y0 < line.y1 and line.y0 < b.y1
                    for b in boxes
                )
    return found, len(image.lines), touched, boxes_seen


def detection(variants: int, console: Console, seed: int = 14) -> dict[str, object]:
    """Box- and image-level recall and the clean-blanked rate, overall and per package."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0] * 7)
    misses: list[str] = []
    started = time.perf_counter()
    images = 0
    for clean, text in corpus(seed=seed, variants=variants):
        lines_found, lines, touched, _ = evaluate(text)
        *_, clean_hits = evaluate(clean)
        images += 2
        for key in (text.source, "all"):
            row = totals[key]
            row[0] += lines_found
            row[1] += lines
            row[2] += lines_found == lines
            row[3] += 1
            row[4] += clean_hits > 0
            row[5] += 1
            row[6] += touched > 0
        if lines_found < lines:
            misses.append(f"{text.name}: {lines - lines_found} of {lines} lines missed")
        if clean_hits:
            misses.append(f"{clean.name}: text found in a clean image")
    seconds = time.perf_counter() - started
    table = Table(title=f"text detection, {variants} variants per source, seed {seed}")
    columns = ("package", "box recall", "image flagged", "image cleared", "clean blanked", "pairs")
    for column in columns:
        table.add_column(column, justify="right")
    report: dict[str, object] = {}
    for key, (found, lines, whole, texts, blanked, cleans, flagged) in sorted(totals.items()):
        figures = {
            "box_recall": found / lines,
            "image_recall": flagged / texts,
            "image_cleared": whole / texts,
            "clean_blanked": blanked / cleans,
            "pairs": texts,
        }
        report[key] = figures
        table.add_row(
            key,
            f"{figures['box_recall']:.1%}",
            f"{figures['image_recall']:.1%}",
            f"{figures['image_cleared']:.1%}",
            f"{figures['clean_blanked']:.1%}",
            str(texts),
        )
    console.print(table)
    for miss in misses:
        console.print(f"  {miss}")
    console.print(
        f"{images} images in {seconds:.1f} s ({images / seconds:.1f} images/s, 1 process)"
    )
    return {"by_package": report, "misses": misses, "images_per_second": images / seconds}


def throughput_corpus(files: int, variants: int) -> list[bytes]:
    """A quarter OCR test-set files (half with text), three quarters files OCR does not read."""
    plain = []
    for data in load_corpus(200):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data))
        if not needs_scrubbing(dataset, POLICY):
            plain.append(data)
    suspect = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in corpus(seed=41, variants=variants):
            for image in pair:
                path = Path(tmp) / f"{image.name}.dcm"
                write_dicom(image, path)
                suspect.append(path.read_bytes())
    quarter = files // 4
    chosen = [suspect[i % len(suspect)] for i in range(quarter)]
    chosen += [plain[i % len(plain)] for i in range(files - quarter)]
    return chosen


def mira_once(data: bytes) -> None:
    deidentify_dicom(data, KEY, POLICY)


def run_slice(args: tuple[str, int, int]) -> int:
    name, start, stop = args
    method = mira_once if name == "mira" else dicognito_once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in FILES[start:stop]:
            # a refused file still costs its time; both tools see the same files
            with contextlib.suppress(Exception):
                method(data)
    return stop - start


def throughput(files: int, workers: int, rounds: int, variants: int, console: Console) -> dict:
    FILES.extend(throughput_corpus(files, variants))
    order = np.random.default_rng(14).permutation(len(FILES))  # OCR files spread over slices
    FILES[:] = [FILES[i] for i in order]
    context = multiprocessing.get_context("fork")
    rates = {"dicognito": 0.0, "mira": 0.0}
    with context.Pool(workers) as pool:
        pool.map(run_slice, [(name, 0, 10) for name in rates for _ in range(workers)])
        step = max(1, len(FILES) // (workers * 8))
        for _ in range(rounds):
            for name in rates:
                slices = [(name, i, min(i + step, len(FILES))) for i in range(0, len(FILES), step)]
                started = time.perf_counter()
                pool.map(run_slice, slices)
                rates[name] = max(rates[name], len(FILES) / (time.perf_counter() - started))
    console.print(
        f"de-identification, {len(FILES)} files (a quarter need OCR), {workers} processes: "
        f"mira {rates['mira']:.1f} files/s, dicognito {rates['dicognito']:.1f} files/s, "
        f"{rates['mira'] / rates['dicognito']:.2f}x (target >= 2x)"
    )
    return {"files": len(FILES), "workers": workers, "files_per_second": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", type=int, default=10, help="test images per source")
    parser.add_argument("--seed", type=int, default=14, help="test set seed (14: the tuning set)")
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    console = Console()
    report: dict[str, object] = {"detection": detection(args.variants, console, args.seed)}
    if not args.skip_throughput:
        speed = throughput(args.files, args.workers, args.rounds, 2, console)
        rates = speed["files_per_second"]
        speed["mira_vs_dicognito"] = rates["mira"] / rates["dicognito"]
        report["throughput"] = speed
    report["targets"] = {"image_recall": 0.99, "clean_blanked": 0.02, "mira_vs_dicognito": 2.0}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_ocr.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
