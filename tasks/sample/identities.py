"""Synthetic patients for ``mira sample-data`` and the DICOM attributes their PHI is planted in.

Each patient is a fake but realistic identity with four studies; the planting functions write it
into a dataset the way sites do: the patient module, free text, nested sequences and a vendor
private block. Everything derives from the seed, so reruns plant identical identifiers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

from pydicom.dataset import Dataset

PRIVATE_CREATOR = "ACME PACS 1.0"
DETACHED_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

FAMILIES = "DOE SMITH GARCIA NGUYEN OKAFOR KOWALSKI JOHANSSON PATEL MORENO TANAKA OBRIEN MUELLER"
GIVENS = (
    "JANE:F JOHN:M MARIA:F MINH:M ADAEZE:F PIOTR:M INGRID:F RAVI:M LUCIA:F KENJI:M SIOBHAN:F HANS:M"
)
NAME_PAIRS = len(FAMILIES.split()) * len(GIVENS.split())
STREETS = ("ELM STREET", "OAK AVENUE", "MAPLE DRIVE", "CEDAR LANE", "PINE ROAD", "BIRCH COURT")
TOWNS = ("SPRINGFIELD, IL 62704", "RIVERTON, UT 84065", "FAIRVIEW, OR 97024")
INSTITUTIONS = (
    ("SPRINGFIELD GENERAL HOSPITAL", "100 MAIN STREET, SPRINGFIELD, IL 62701"),
    ("MERCY WEST MEDICAL CENTER", "2200 LAKE SHORE DRIVE, CHICAGO, IL 60616"),
    ("ST ELSEWHERE HOSPITAL", "736 HUNTINGTON AVENUE, BOSTON, MA 02115"),
)
PHYSICIANS = ["HOUSE^GREGORY^^DR", "QUINN^MICHAELA^^DR", "KILDARE^JAMES^^DR", "GREY^MEREDITH^^DR"]
RANKS = ("SERGEANT", "CAPTAIN", "CORPORAL", "MAJOR")
ETHNIC_GROUPS = ("HISPANIC", "ASIAN", "WHITE", "BLACK", "PACIFIC ISLANDER")


@dataclass(frozen=True)
class SyntheticStudy:
    """One imaging study of a synthetic patient, with the identifiers a site would give it."""

    modality: str
    description: str
    date: str  # DICOM DA
    time: str  # DICOM TM
    accession: str
    study_id: str
    uid: str


@dataclass(frozen=True)
class SyntheticPatient:
    """A fake but realistic identity, as it appears across a site's DICOM headers."""

    family: str
    given: str
    sex: str
    patient_id: str
    issuer: str
    other_ids: tuple[str, ...]
    birth_date: str
    address: str
    phone: str
    ethnic_group: str
    mother_birth_name: str
    military_rank: str
    institution: str
    institution_address: str
    referring: str
    performing: str
    operator: str
    studies: dict[str, SyntheticStudy]  # CT, MR, US and the CT follow-up still uploading

    @property
    def name(self) -> str:
        """DICOM person name, FAMILY^GIVEN."""
        return f"{self.family}^{self.given}"

    @property
    def folder(self) -> str:
        """The patient folder name sites use in uploads."""
        return f"{self.family}_{self.given}"

    def age_at(self, date: str) -> str:
        """DICOM age string (``045Y``) on a study date."""
        born, then = dt.date.fromisoformat(self.birth_date), dt.date.fromisoformat(date)
        years = then.year - born.year - ((then.month, then.day) < (born.month, born.day))
        return f"{years:03d}Y"


def derive_uid(seed: int, *parts: object) -> str:
    """A stable ``2.25.<int>`` UID from the seed and a name, so reruns reproduce every UID."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _study(
    rng: random.Random, modality: str, description: str, date: dt.date, seed: int
) -> SyntheticStudy:
    """A study on ``date`` with its own accession number, study ID and UID."""
    accession = f"A{_digits(rng, 7)}"
    time = f"{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
    return SyntheticStudy(
        modality,
        description,
        date.strftime("%Y%m%d"),
        time,
        accession,
        f"{modality}{_digits(rng, 5)}",
        derive_uid(seed, "study", accession),
    )


def _studies(rng: random.Random, seed: int) -> dict[str, SyntheticStudy]:
    first = dt.date(2019, 1, 1) + dt.timedelta(days=rng.randint(0, 6 * 365))
    return {
        "CT": _study(rng, "CT", "CT CHEST W CONTRAST", first, seed),
        "MR": _study(
            rng, "MR", "MRI BRAIN WO CONTRAST", first + dt.timedelta(rng.randint(3, 40)), seed
        ),
        "US": _study(
            rng, "US", "US ABDOMEN COMPLETE", first + dt.timedelta(rng.randint(41, 90)), seed
        ),
        "CT-FU": _study(
            rng, "CT", "CT CHEST FOLLOW UP", first + dt.timedelta(rng.randint(180, 400)), seed
        ),
    }


def make_patient(index: int, seed: int) -> SyntheticPatient:
    """Patient ``index`` of the sample set; names are unique for up to 144 patients per seed."""
    families, givens = FAMILIES.split(), [pair.split(":") for pair in GIVENS.split()]
    pair = (index * 13 + seed * 7) % NAME_PAIRS  # 13 is coprime to 144: a permutation
    given, sex = givens[(pair // len(families) + pair) % len(givens)]
    mothers = [name for name, mother_sex in givens if mother_sex == "F"]
    rng = random.Random(f"mira-sample:{seed}:{index}")
    institution, institution_address = rng.choice(INSTITUTIONS)
    born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randint(0, 65 * 365))
    return SyntheticPatient(
        family=families[pair % len(families)],
        given=given,
        sex=sex,
        patient_id=f"MRN{_digits(rng, 7)}",
        issuer=f"{institution.split()[0]} MRN",
        other_ids=(f"HX{_digits(rng, 6)}", f"INS{_digits(rng, 9)}"),
        birth_date=born.strftime("%Y%m%d"),
        address=f"{rng.randint(10, 9999)} {rng.choice(STREETS)}, {rng.choice(TOWNS)}",
        phone=f"({_digits(rng, 3)}) 555-{_digits(rng, 4)}",
        ethnic_group=rng.choice(ETHNIC_GROUPS),
        mother_birth_name=f"{rng.choice(families)}^{rng.choice(mothers)}",
        military_rank=rng.choice(RANKS),
        institution=institution,
        institution_address=institution_address,
        referring=rng.choice(PHYSICIANS),
        performing=rng.choice(PHYSICIANS),
        operator=f"{rng.choice(families)}^{rng.choice(givens)[0]}^^RT",
        studies=_studies(rng, seed),
    )


def _item(**elements: object) -> Dataset:
    """A sequence item with the given keyword attributes."""
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _code(value: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator="DCM", CodeMeaning=meaning)


def _plant_patient(ds: Dataset, patient: SyntheticPatient, study: SyntheticStudy) -> None:
    """Patient module, with the less obvious identifying attributes de-identifiers forget."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age_at(study.date)
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.phone
    ds.PatientMotherBirthName = patient.mother_birth_name
    ds.MilitaryRank = patient.military_rank
    ds.EthnicGroup = patient.ethnic_group
    ds.OtherPatientIDsSequence = [
        _item(PatientID=other, IssuerOfPatientID=patient.issuer, TypeOfPatientID="TEXT")
        for other in patient.other_ids
    ]


def _plant_study(
    ds: Dataset, patient: SyntheticPatient, study: SyntheticStudy, series: str
) -> None:
    """Study and series attributes, with the patient's name and MRN pasted into free text."""
    for prefix in ("Study", "Series", "Acquisition", "Content", "InstanceCreation"):
        setattr(ds, f"{prefix}Date", study.date)
        setattr(ds, f"{prefix}Time", study.time)
    ds.AccessionNumber = study.accession
    ds.StudyID = study.study_id
    ds.StudyInstanceUID = study.uid
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = patient.institution_address
    ds.ReferringPhysicianName = patient.referring
    ds.PerformingPhysicianName = patient.performing
    ds.NameOfPhysiciansReadingStudy = patient.referring
    ds.OperatorsName = patient.operator
    ds.StudyDescription = f"{study.description} - {patient.name}"
    ds.SeriesDescription = f"{series} {patient.patient_id}"
    ds.ImageComments = (
        f"Pt {patient.given} {patient.family}, MRN {patient.patient_id}, "
        f"DOB {patient.birth_date}. Prior exam {patient.other_ids[0]}."
    )
    ds.AdditionalPatientHistory = (
        f"{patient.given} {patient.family} referred for follow-up; "
        f"call {patient.phone} with results."
    )
    ds.RequestedProcedureDescription = f"{study.modality} FOR {patient.family}, {patient.given}"


def _plant_nested(ds: Dataset, patient: SyntheticPatient, study: SyntheticStudy) -> None:
    """Identifiers two sequence levels deep, where shallow de-identifiers never look."""
    number = study.accession[1:]
    ds.ReferencedStudySequence = [
        _item(ReferencedSOPClassUID=DETACHED_STUDY_SOP_CLASS, ReferencedSOPInstanceUID=study.uid)
    ]
    ds.RequestAttributesSequence = [
        _item(
            RequestedProcedureID=f"RP{number}",
            AccessionNumber=study.accession,
            ScheduledProcedureStepID=f"SPS{number}",
            RequestedProcedureDescription=f"{study.description} {patient.name}",
            ReferencedStudySequence=[
                _item(
                    ReferencedSOPClassUID=DETACHED_STUDY_SOP_CLASS,
                    ReferencedSOPInstanceUID=study.uid,
                )
            ],
        )
    ]
    observer = _item(
        RelationshipType="HAS OBS CONTEXT",
        ValueType="PNAME",
        ConceptNameCodeSequence=[_code("121008", "Person Observer Name")],
        PersonName=patient.operator,
    )
    ds.AcquisitionContextSequence = [
        _item(
            ValueType="CONTAINER",
            ConceptNameCodeSequence=[_code("121005", "Observer Type")],
            ContentSequence=[observer],
        )
    ]


def _plant_private(ds: Dataset, patient: SyntheticPatient, study: SyntheticStudy) -> None:
    """A vendor private block repeating the identity, as PACS and modalities do."""
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", patient.name)
    block.add_new(0x02, "LO", patient.patient_id)
    block.add_new(0x03, "DA", study.date)
    block.add_new(
        0x04, "LT", f"Referred by {patient.referring} for {patient.name} DOB {patient.birth_date}"
    )
    block.add_new(0x05, "SH", study.accession)
    block.add_new(
        0x06, "SQ", [_item(PatientName=patient.name, PatientBirthDate=patient.birth_date)]
    )


def plant_identity(
    ds: Dataset, patient: SyntheticPatient, study: SyntheticStudy, series: str
) -> None:
    """Write the patient's identity into every place a site's DICOM headers carry it."""
    _plant_patient(ds, patient, study)
    _plant_study(ds, patient, study, series)
    _plant_nested(ds, patient, study)
    _plant_private(ds, patient, study)
