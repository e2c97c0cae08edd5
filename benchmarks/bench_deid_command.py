"""The whole ``mira deid`` command as a user types it, beside dicognito's command line.

Run: ``.venv/bin/python -m benchmarks.bench_deid_command [--large] [--rounds 2]``. The corpus
is small original CT and MR images that pydicom ships (CT_small.dcm and the DICOMDIR test
series), each copy given its own patient, study, series and
SOP Instance UID and written to a folder (10 files a series, 5 series a patient). Both commands
start as new processes, in the same environment (PYTHONDONTWRITEBYTECODE included, when set),
read that folder and write a fresh output folder; the clock covers the whole command: start-up,
imports, the work and the exit. ``mira deid`` runs with its defaults (a process pool on this
machine), dicognito as its documented CLI (``python -m dicognito --output-directory OUT DIR``;
one process). Sizes: 1,000 files, and 10,000 with ``--large``. Target: mira >= 2x dicognito
on every size. Writes benchmarks/results/bench_deid_command.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
SECRET = "benchmark-only-secret-0123456789abcdef"
# Original (not derived) CT and MR images: no OCR pass, as on a typical radiology upload.
TEMPLATES = ("CT_small.dcm", "17106", "2062", "15820", "4950")
FILES_PER_SERIES = 10
SERIES_PER_PATIENT = 5
SURNAMES = ("HARTLEY", "OKONKWO", "LINDQVIST", "MORETTI", "TANAKA", "FERREIRA", "NOVAK")
TARGET = 2.0


def build_corpus(folder: Path, files: int) -> None:
    """``files`` DICOM files below ``folder``: real pydicom files under new identities."""
    templates = [pydicom.dcmread(str(pydicom.data.get_testdata_file(name))) for name in TEMPLATES]
    series_uid = study_uid = ""
    for index in range(files):
        series, in_series = divmod(index, FILES_PER_SERIES)
        patient = series // SERIES_PER_PATIENT
        ds = templates[series % len(templates)].copy()
        if in_series == 0:
            series_uid = generate_uid()
            if series % SERIES_PER_PATIENT == 0:
                study_uid = generate_uid()
        ds.PatientName = f"{SURNAMES[patient % len(SURNAMES)]}^ANNA{patient:05d}"
        ds.PatientID = f"MRN{patient:07d}"
        ds.PatientBirthDate = f"19{40 + patient % 60:02d}0{1 + patient % 9}15"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = in_series + 1
        target = folder / f"patient{patient:05d}" / f"series{series:06d}" / f"{in_series:03d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)


def mira_command(corpus: Path, output: Path) -> list[str]:
    mira = Path(sys.executable).with_name("mira")
    return [str(mira), "deid", str(corpus), str(output / "out"), "--quarantine", str(output / "q")]


def dicognito_command(corpus: Path, output: Path) -> list[str]:
    # The installed ``dicognito`` script of 0.19 calls main() without its arguments; the
    # module form is the working spelling of the same CLI.
    return [sys.executable, "-m", "dicognito", "--output-directory", str(output), str(corpus)]


COMMANDS = {"mira deid": mira_command, "dicognito": dicognito_command}


def run_once(name: str, corpus: Path, scratch: Path, files: int) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all its processes) of one whole command; it must
    succeed and write one output per input. CPU seconds tell, on a shared machine, whether a
    slow round was the command or the neighbours."""
    output = scratch / name.replace(" ", "-")
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    env = {**os.environ, "MIRA_DEID_SECRET": SECRET}
    env.pop("MIRA_DASK_ADDRESS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    finished = subprocess.run(
        COMMANDS[name](corpus, output), env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if finished.returncode != 0:
        raise SystemExit(f"{name} failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    published = output / "out" if name == "mira deid" else output
    written = sum(1 for p in published.rglob("*") if p.is_file())
    if written != files:
        raise SystemExit(f"{name} wrote {written} files for {files} inputs")
    shutil.rmtree(output)
    return seconds, cpu


def measure(files: int, rounds: int, scratch: Path) -> dict[str, dict[str, float]]:
    """Best wall and CPU seconds of each command over ``rounds`` alternating runs (a burst of
    load on a shared machine then hits both alike)."""
    corpus = scratch / f"corpus-{files}"
    build_corpus(corpus, files)
    best = {name: {"wall": float("inf"), "cpu": float("inf")} for name in COMMANDS}
    for _ in range(rounds):
        for name in COMMANDS:
            wall, cpu = run_once(name, corpus, scratch, files)
            best[name] = {"wall": min(best[name]["wall"], wall), "cpu": min(best[name]["cpu"], cpu)}
    shutil.rmtree(corpus)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", action="store_true", help="Also run 10,000 files.")
    parser.add_argument("--sizes", type=int, nargs="*", help="Corpus sizes (default 1000).")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sizes = args.sizes or ([1000, 10000] if args.large else [1000])
    report: dict[str, object] = {"cpus": os.cpu_count(), "rounds": args.rounds}
    table = Table(title=f"whole commands, {os.cpu_count()} CPUs, best of {args.rounds}")
    columns = ("files", "mira deid s", "dicognito s", "mira / dicognito", "CPU s mira, dicognito")
    for column in columns:
        table.add_column(column, justify="right")
    ok = True
    sized: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mira-bench-cmd-") as tmp:
        for files in sizes:
            best = measure(files, args.rounds, Path(tmp))
            mira, dicognito = best["mira deid"], best["dicognito"]
            ratio = dicognito["wall"] / mira["wall"]
            ok &= ratio >= TARGET
            sized[str(files)] = {"seconds": best, "mira_vs_dicognito": ratio}
            table.add_row(
                f"{files:,}",
                f"{mira['wall']:.2f}",
                f"{dicognito['wall']:.2f}",
                f"{ratio:.2f}x",
                f"{mira['cpu']:.1f}, {dicognito['cpu']:.1f}",
            )
    report["sizes"] = sized
    report["target_mira_vs_dicognito"] = TARGET
    console = Console()
    console.print(table)
    console.print(f"target: mira deid >= {TARGET:.0f}x dicognito's CLI on every size")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_deid_command.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
