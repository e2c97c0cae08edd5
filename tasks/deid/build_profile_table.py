"""Regenerate ``ps315_table_e11.json``, mira's own encoding of DICOM PS3.15 Table E.1-1.

Run ``python -m tasks.deid.build_profile_table REFERENCE.json`` when a new edition of the
standard is adopted; the runtime reads only the generated file, never the reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_keyword, dictionary_VR

OPTION_NAMES = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
TABLE_FILE = Path(__file__).with_name("ps315_table_e11.json")
PRIVATE_ROW_ID = "ggggeeee-where-gggg-is-odd"


def encode_row(row: dict[str, Any]) -> dict[str, Any]:
    """Return one reference row in mira's encoding (tag, keyword, VR, basic action, options)."""
    row_id = str(row["id"]).lower()
    tag = "private" if row_id == PRIVATE_ROW_ID else row_id
    keyword, vr = "", ""
    if all(c in "0123456789abcdef" for c in tag):
        keyword = dictionary_keyword(int(tag, 16))
        vr = dictionary_VR(int(tag, 16))
    options = {name: row[key] for key, name in OPTION_NAMES.items() if key in row}
    return {
        "tag": tag,
        "keyword": keyword,
        "name": row["name"],
        "vr": vr,
        "basic": row["basicProfile"],
        "options": options,
    }


def build_table(reference: Path, edition: str) -> dict[str, Any]:
    """Encode every row of the reference table, sorted by tag."""
    rows = json.loads(reference.read_text(encoding="utf-8"))
    encoded = sorted((encode_row(row) for row in rows), key=lambda r: r["tag"])
    return {
        "standard": "DICOM PS3.15 Annex E Table E.1-1",
        "edition": edition,
        "generated_by": "tasks/deid/build_profile_table.py",
        "rows": encoded,
    }


def render_table(table: dict[str, Any]) -> str:
    """Serialise the table with one row per line, so a diff shows exactly the rows that changed."""
    head = {key: value for key, value in table.items() if key != "rows"}
    lines = [json.dumps(row, separators=(", ", ": ")) for row in table["rows"]]
    header = json.dumps(head, indent=1)[:-2]
    return header + ',\n "rows": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main() -> None:
    """Command-line entry: read the reference JSON and write the project's table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--edition", default="2024b")
    parser.add_argument("--out", type=Path, default=TABLE_FILE)
    args = parser.parse_args()
    args.out.write_text(render_table(build_table(args.reference, args.edition)), encoding="utf-8")


if __name__ == "__main__":
    main()
