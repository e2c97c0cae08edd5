"""De-identify one DICOM Part-10 file: headers by PS3.15 Table E.1-1, pixels when text is burned in.

The dataset is walked once, every nesting level included. Each element is looked up in the
policy's precompiled tag -> rule map; elements that are kept are never decoded (their raw bytes
are written back as read, pixel data included). Descriptors are cleaned after the walk, once the
identifiers of the whole record (nested items and private tags included) are known.
"""

from __future__ import annotations

import contextlib
import functools
import io
import zlib
from dataclasses import dataclass

import pydicom
from pydicom import config, filewriter
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mira.errors import DeidentificationError, InvalidInput
from tasks.deid.actions import compile_profile
from tasks.deid.pixels import (
    PIXEL_TAGS,
    PixelScrub,
    check_overlays,
    device_of,
    needs_scrubbing,
    scrub_burned_in,
)
from tasks.deid.profile import CLEAN_PIXEL_DATA_CODE, DeidOption, DeidPolicy
from tasks.deid.pseudonyms import check_key
from tasks.deid.walker import DatasetWalker, peek_text, raw_text_element

IMPLEMENTATION_VERSION_NAME = "MIRA_DEID_1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
MODALITY = 0x00080060
PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
BURNED_IN_ANNOTATION = 0x00280301
DIRECTORY_RECORDS = 0x00041220
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
METHOD_CODES = 0x00120064
TEMPORAL_MODIFIED = 0x00280303
PATIENT_TAGS = ((0x00100010, "PN"), (0x00100020, "LO"))
REQUIRED_UIDS = {
    SOP_CLASS_UID: "SOPClassUID",
    SOP_INSTANCE_UID: "SOPInstanceUID",
    STUDY_UID: "StudyInstanceUID",
    SERIES_UID: "SeriesInstanceUID",
}


@dataclass(frozen=True)
class DicomDeidResult:
    """A de-identified Part-10 file and the pseudonyms the store files it under.

    ``identifiers`` are the search tokens collected from the INPUT, for the PHI scan only: they
    are PHI themselves and must never be written to the research store.
    """

    data: bytes
    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    modality: str
    scrubbed_pixels: bool
    identifiers: frozenset[str]
    text_boxes: int = 0
    text_frames: int = 0


def deidentify_dicom(data: bytes, key: bytes, policy: DeidPolicy) -> DicomDeidResult:
    """De-identify one Part-10 file; raise ``DeidentificationError`` when it cannot be made safe
    (burned-in text that OCR cannot clear, embedded overlays) and ``InvalidInput`` when it is
    not a composite instance (no Study/Series/SOP Instance UID, a DICOMDIR)."""
    check_key(key)
    dataset = read_dataset(data)
    check_composite_instance(dataset)
    check_complete(dataset)
    check_overlays(dataset)
    scrub = needs_scrubbing(dataset, policy)
    if scrub and not policy.ocr and policy.scrub_rule_for(*device_of(dataset)) is None:
        raise DeidentificationError(f"burned-in text suspected and {_no_rule(dataset)}")
    walker = DatasetWalker(compile_profile(policy), key, patient_key(dataset))
    walker.walk(dataset)
    walker.collect_meta(getattr(dataset, "file_meta", None))
    walker.clean_deferred()
    walker.restore_untouched_sequences()
    dataset.file_meta = rewritten_file_meta(dataset)
    pixels = scrub_burned_in(dataset, policy) if scrub else None
    record_method(dataset, policy, pixels, walker.patient_id)
    return DicomDeidResult(
        data=write_dataset(dataset),
        patient_id=walker.patient_id,
        study_uid=peek_text(dataset, STUDY_UID),
        series_uid=peek_text(dataset, SERIES_UID),
        sop_instance_uid=peek_text(dataset, SOP_INSTANCE_UID),
        modality=peek_text(dataset, MODALITY),
        scrubbed_pixels=pixels is not None and pixels.changed,
        identifiers=frozenset(walker.identifiers),
        text_boxes=pixels.text_boxes if pixels else 0,
        text_frames=pixels.text_frames if pixels else 0,
    )


def collect_dicom_identifiers(dataset: Dataset, policy: DeidPolicy | None = None) -> set[str]:
    """The identifier tokens of a dataset (every level, private tags included), without
    changing it: names and their components, IDs, dates in DA and free-text forms, UIDs,
    addresses, institution, phone numbers."""
    walker = DatasetWalker(compile_profile(policy or DeidPolicy.default()), b"\x00" * 16, "")
    walker.collect_items([dataset])
    walker.collect_meta(getattr(dataset, "file_meta", None))
    return walker.identifiers


def read_dataset(data: bytes) -> Dataset:
    """Parse Part-10 bytes (a missing preamble/meta is tolerated) or raise ``InvalidInput``."""
    try:
        return pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        pass
    except Exception as err:
        raise InvalidInput(f"unreadable DICOM: {err}") from err
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as err:
        raise InvalidInput(f"unreadable DICOM: {err}") from err
    if not len(dataset) or SOP_CLASS_UID not in dataset._dict:
        raise InvalidInput("not a DICOM file: no DICM prefix and no SOP Class UID")
    return dataset


def check_composite_instance(dataset: Dataset) -> None:
    """Refuse what is not a composite instance: the store files by study/series/instance UIDs."""
    if peek_text(dataset, SOP_CLASS_UID) == MEDIA_STORAGE_DIRECTORY or (
        DIRECTORY_RECORDS in dataset._dict
    ):
        raise InvalidInput("a DICOMDIR is not an image instance; de-identify the files it lists")
    for tag, keyword in REQUIRED_UIDS.items():
        if not peek_text(dataset, tag):
            raise InvalidInput(f"not a composite DICOM instance: {keyword} is missing")


def check_complete(dataset: Dataset) -> None:
    """Refuse a file that ends inside its pixel data: its output would hold fewer pixel bytes
    than Rows and Columns declare, which is not valid DICOM (bad input is quarantined)."""
    for tag in PIXEL_TAGS:
        elem = dataset._dict.get(BaseTag(tag))
        if not isinstance(elem, RawDataElement) or elem.value is None:
            continue
        if elem.length != 0xFFFFFFFF and len(elem.value) < elem.length:
            raise InvalidInput(
                f"truncated file: ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {elem.length} "
                f"bytes and holds {len(elem.value)}"
            )


def patient_key(dataset: Dataset) -> str:
    """What identifies the patient for pseudonyms and date shifts: PatientID, or when it is
    empty the name and birth date, or as a last resort the study (one patient per study)."""
    patient_id = peek_text(dataset, PATIENT_ID)
    if patient_id:
        return patient_id
    name = str(dataset.get("PatientName", "") or "").strip("\x00 ")
    if name:
        return f"name:{name}|{peek_text(dataset, PATIENT_BIRTH_DATE)}"
    return f"study:{peek_text(dataset, STUDY_UID)}"


def _no_rule(dataset: Dataset) -> str:
    """Why an image was refused: the burned-in evidence and the device no rule matches."""
    modality, manufacturer, model = device_of(dataset)
    burned = peek_text(dataset, BURNED_IN_ANNOTATION) or "absent"
    return (
        f"no scrub rule for {modality or '?'}/{manufacturer or '?'}/{model or '?'} "
        f"(BurnedInAnnotation {burned})"
    )


def rewritten_file_meta(dataset: Dataset) -> FileMetaDataset:
    """A new file meta group: classes and syntax kept, instance UID = the new SOP Instance UID,
    mira as the implementation; source/sending AE titles and private information dropped."""
    old = getattr(dataset, "file_meta", None)
    syntax = old.get("TransferSyntaxUID") if old is not None else None
    if not syntax:
        implicit, little = dataset.original_encoding
        if implicit is None:
            implicit, little = True, True
        syntax = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    meta = FileMetaDataset()
    meta._dict[BaseTag(0x00020001)] = DataElement(
        0x00020001, "OB", b"\x00\x01", validation_mode=config.IGNORE
    )
    for tag, vr, text in (
        (0x00020002, "UI", peek_text(dataset, SOP_CLASS_UID)),
        (0x00020003, "UI", peek_text(dataset, SOP_INSTANCE_UID)),
        (0x00020010, "UI", str(syntax)),
        (0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID),
        (0x00020013, "SH", IMPLEMENTATION_VERSION_NAME),
    ):
        meta._dict[BaseTag(tag)] = raw_text_element(tag, vr, text, False, True)
    return meta


def record_method(
    dataset: Dataset, policy: DeidPolicy, pixels: PixelScrub | None, patient_id: str
) -> None:
    """Record what was done: PatientIdentityRemoved, DeidentificationMethod (+ codes, and a second
    value saying what OCR blanked when the pixels were read),
    LongitudinalTemporalInformationModified; and add the pseudonymous PatientID/PatientName
    (type 2) when the input had none."""
    implicit, little = dataset.file_meta.TransferSyntaxUID.is_implicit_VR, True
    with contextlib.suppress(ValueError):
        little = dataset.file_meta.TransferSyntaxUID.is_little_endian
    if policy.has(DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES):
        temporal = "MODIFIED"
    elif policy.has(DeidOption.RETAIN_LONGITUDINAL_FULL_DATES):
        temporal = "UNMODIFIED"
    else:
        temporal = "REMOVED"
    values = [
        (PATIENT_IDENTITY_REMOVED, "CS", "YES"),
        (DEIDENTIFICATION_METHOD, "LO", _method_text(policy, pixels)),
        (TEMPORAL_MODIFIED, "CS", temporal),
    ]
    values += [(tag, vr, patient_id) for tag, vr in PATIENT_TAGS if tag not in dataset._dict]
    for tag, vr, text in values:
        dataset._dict[BaseTag(tag)] = raw_text_element(tag, vr, text, implicit, little)
    scrubbed = pixels is not None and pixels.changed
    codes = (*policy.method_codes(), *((CLEAN_PIXEL_DATA_CODE,) if scrubbed else ()))
    dataset._dict[BaseTag(METHOD_CODES)] = method_code_sequence(codes, implicit, little)


def _method_text(policy: DeidPolicy, pixels: PixelScrub | None) -> str:
    """DeidentificationMethod (LO, VM 1-n): the profile, then what burned-in text handling did."""
    if pixels is None:
        return policy.method_description()
    return f"{policy.method_description()}\\{pixels.describe()}"


@functools.lru_cache(maxsize=64)
def method_code_sequence(
    codes: tuple[tuple[str, str], ...], implicit: bool, little: bool
) -> RawDataElement:
    """DeidentificationMethodCodeSequence, encoded once per policy and encoding."""
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    holder = Dataset()
    holder.DeidentificationMethodCodeSequence = Sequence(items)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    filewriter.write_dataset(buffer, holder)
    encoded = bytes(buffer.getvalue())
    body = encoded[8:] if implicit else encoded[12:]
    return RawDataElement(
        BaseTag(METHOD_CODES), "SQ", len(body), body, 0, implicit, little, True, False
    )


def _read_as_implicit(dataset: Dataset) -> bool:
    """Whether the body was encoded implicit VR (some files contradict their transfer syntax)."""
    for elem in dataset._dict.values():
        if isinstance(elem, RawDataElement):
            return bool(elem.is_implicit_VR)
    return False


def write_dataset(dataset: Dataset) -> bytes:
    """Encode the dataset as a Part-10 file (zeroed preamble, standard file meta), in the
    encoding its transfer syntax names. pydicom's ``dcmwrite`` would deep-copy the meta."""
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        implicit, little = bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)
    except ValueError:
        implicit, little = (bool(flag) for flag in dataset.original_encoding)
    if not implicit and _read_as_implicit(dataset):
        dataset.walk(lambda _ds, _elem: None)  # decode now so every element gets its VR
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    buffer.write(b"\x00" * 128 + b"DICM")
    try:
        write_file_meta_info(buffer, dataset.file_meta, enforce_standard=True)
        if syntax == DeflatedExplicitVRLittleEndian:
            body = DicomBytesIO()
            body.is_implicit_VR, body.is_little_endian = False, True
            filewriter.write_dataset(body, dataset)
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            deflated = compressor.compress(body.getvalue()) + compressor.flush()
            buffer.write(deflated + b"\x00" * (len(deflated) % 2))
        else:
            filewriter.write_dataset(buffer, dataset)
    except Exception as err:
        raise DeidentificationError(f"cannot encode the de-identified file: {err}") from err
    return bytes(buffer.getvalue())
