"""Seeded synthetic clinical population as FHIR R4 resources, so ``salus demo`` can fill a server with realistic data.

The population is a fictional health system in Greater Boston ("Salus Health"): a fixed pool of organizations,
locations, practitioners and practitioner roles, then patients with a few years of records each (wellness and
follow-up visits, acute episodes, emergency and inpatient stays) carrying conditions, vital signs, laboratory
panels, prescriptions, allergies, immunizations and procedures.

Design rules:

* **Deterministic.** Everything comes from ``random.Random`` instances seeded with strings built from the seed
  (never ``hash()``, never the clock); times are relative to :data:`REFERENCE_DATE`, not today.
* **Independent patients.** Patient ``i`` has its own generator seeded from ``(seed, i)`` and the shared pool has a
  fixed size, so the first patients of ``generate(10)`` are exactly those of ``generate(100)``.
* **Dependency order.** A resource is yielded only after every resource it references, so a loader can insert the
  stream as it comes.
* **Streaming.** One patient's resources are held at a time.
* **Table driven.** Codes and physiology live in the tables below; the functions only combine them.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

__all__ = ["POOL_SIZE", "REFERENCE_DATE", "count_by_type", "estimate", "generate"]

Resource = dict[str, Any]

# Clinical time stops here so the output never depends on when it is generated.
REFERENCE_DATE = date(2026, 1, 1)
_END = datetime(REFERENCE_DATE.year, REFERENCE_DATE.month, REFERENCE_DATE.day)
# Visits start at least this long before the reference date so stays, results and courses can finish before it.
_LAST_VISIT = _END - timedelta(days=8)

# Measured average over the default seed; only used for progress estimates.
_RESOURCES_PER_PATIENT = 50

# ---------------------------------------------------------------------------------------------------------------
# Code systems
# ---------------------------------------------------------------------------------------------------------------

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN = "http://salus.example.org/mrn"
BCP47 = "urn:ietf:bcp:47"
_TERM = "http://terminology.hl7.org/CodeSystem/"
OBS_CATEGORY = _TERM + "observation-category"
COND_CATEGORY = _TERM + "condition-category"
COND_CLINICAL = _TERM + "condition-clinical"
COND_VERIFICATION = _TERM + "condition-ver-status"
ALLERGY_CLINICAL = _TERM + "allergyintolerance-clinical"
ALLERGY_VERIFICATION = _TERM + "allergyintolerance-verification"
ACT_CODE = _TERM + "v3-ActCode"
INTERPRETATION = _TERM + "v3-ObservationInterpretation"
MARITAL = _TERM + "v3-MaritalStatus"
ROLE_CODE = _TERM + "v3-RoleCode"
ROUTE = _TERM + "v3-RouteOfAdministration"
PARTICIPATION = _TERM + "v3-ParticipationType"
IDENTIFIER_TYPE = _TERM + "v2-0203"
DIAG_SERVICE = _TERM + "v2-0074"
RELATIONSHIP = _TERM + "v2-0131"
ORG_TYPE = _TERM + "organization-type"
PHYSICAL_TYPE = _TERM + "location-physical-type"
PRACTITIONER_ROLE = _TERM + "practitioner-role"
DISCHARGE = _TERM + "discharge-disposition"
IMMUNIZATION_ORIGIN = _TERM + "immunization-origin"

# ---------------------------------------------------------------------------------------------------------------
# People: names, languages, places
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Culture:
    """A naming tradition and the language its members may prefer."""

    weight: float
    language: tuple[str, str] | None  # BCP-47 code and display of the non-English language, if any
    prefers_language: float  # share of members who prefer that language over English
    male: tuple[str, ...]
    female: tuple[str, ...]
    family: tuple[str, ...]
    feminine_suffix: str = ""  # Slavic surnames inflect for women (Ivanov -> Ivanova)


ENGLISH = ("en-US", "English (United States)")


def _names(words: str) -> tuple[str, ...]:
    """A name pool written as one string, which keeps the tables short."""
    return tuple(words.split())


CULTURES: tuple[_Culture, ...] = (
    _Culture(
        0.40,
        None,
        0.0,
        _names(
            "James John Robert Michael William David Richard Joseph Thomas Christopher Daniel Matthew Anthony "
            "Brian Kevin Ryan Patrick Sean Marcus Tyrone Ethan Liam Noah Owen"
        ),
        _names(
            "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Emily Ashley "
            "Megan Kathleen Maureen Keisha Latoya Olivia Emma Ava Abigail Chloe Zoë"
        ),
        _names(
            "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore Martin "
            "Jackson Thompson White Harris Clark Lewis Walker Murphy O'Brien Sullivan Kelly McCarthy Walsh "
            "Russo Romano DeLuca Washington"
        ),
    ),
    _Culture(
        0.16,
        ("es", "Spanish"),
        0.45,
        _names("José Luis Carlos Juan Miguel Jorge Pedro Alejandro Fernando Ricardo Mateo Santiago"),
        _names("María Ana Carmen Rosa Lucía Isabel Sofía Gabriela Daniela Valentina Camila Yesenia"),
        _names(
            "García Rodríguez Martínez Hernández López González Pérez Sánchez Ramírez Torres Rivera Cruz "
            "Reyes Morales Ortiz Santiago Colón Vázquez"
        ),
    ),
    _Culture(
        0.07,
        ("zh", "Chinese"),
        0.45,
        _names("Wei Jian Hao Jun Lei Ming Bo Tao Kevin Andy"),
        _names("Li Mei Xiu Ying Hui Lan Jing Fang Grace Amy"),
        _names("Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Lin Xu Chan Wong"),
    ),
    _Culture(
        0.03,
        ("vi", "Vietnamese"),
        0.5,
        _names("Minh Tuan Hung Dung Quang Thanh Long Huy"),
        _names("Linh Lan Mai Hoa Thu Trang Huong Ngoc"),
        _names("Nguyen Tran Le Pham Hoang Vu Dang Bui Do Ho"),
    ),
    _Culture(
        0.05,
        ("hi", "Hindi"),
        0.15,
        _names("Arjun Rahul Vikram Sanjay Amit Rohan Aditya Ravi Karan Nikhil"),
        _names("Priya Ananya Neha Pooja Divya Kavya Sunita Anjali Meera Riya"),
        _names("Patel Shah Sharma Singh Kumar Gupta Reddy Iyer Rao Desai Mehta Joshi"),
    ),
    _Culture(
        0.04,
        ("ht", "Haitian Creole"),
        0.4,
        _names("Jean Pierre Wilner Frantz Jacques Emmanuel Fritz Wesley Ricardo Jean-Claude"),
        _names("Marie Nadège Guerline Fabienne Rose Mirlande Widline Nathalie Esther Dieula"),
        _names("Joseph Pierre Jean Louis Charles François Désir Étienne Célestin Dorval Baptiste Augustin"),
    ),
    _Culture(
        0.04,
        ("pt", "Portuguese"),
        0.5,
        _names("João Pedro Lucas Gabriel Rafael Felipe Thiago Bruno Paulo Manuel"),
        _names("Ana Beatriz Juliana Fernanda Mariana Larissa Camila Patrícia Luana Fátima"),
        _names("Silva Santos Oliveira Souza Pereira Costa Ferreira Almeida Carvalho Rodrigues Medeiros Furtado"),
    ),
    _Culture(
        0.03,
        ("ar", "Arabic"),
        0.4,
        _names("Mohammed Ahmed Omar Ali Youssef Khaled Hassan Karim Tarek Samir"),
        _names("Fatima Aisha Layla Mariam Nour Huda Rania Salma Yasmin Leila"),
        _names("Haddad Khoury Nasser Saleh Hassan Ibrahim Mansour Aziz Farah Hamdan"),
    ),
    _Culture(
        0.03,
        None,
        0.0,
        _names("Chinedu Oluwaseun Kwame Kofi Emeka Tunde Yaw Babajide Ifeanyi Kwabena"),
        _names("Ngozi Adaeze Abena Chiamaka Folake Ama Efua Yetunde Nkechi Akosua"),
        _names("Okafor Adeyemi Mensah Boateng Okonkwo Eze Asante Owusu Adebayo Nwosu"),
    ),
    _Culture(
        0.02,
        ("ko", "Korean"),
        0.4,
        _names("Min-jun Ji-hoon Seo-jun Hyun-woo Dong-hyun Jae-won Daniel Joseph"),
        _names("Ji-woo Seo-yeon Min-ji Soo-jin Eun-ji Hye-jin Grace Esther"),
        _names("Kim Lee Park Choi Jung Kang Cho Yoon"),
    ),
    _Culture(
        0.02,
        ("ru", "Russian"),
        0.4,
        _names("Alexander Dmitri Sergei Andrei Mikhail Ivan Nikolai Pavel"),
        _names("Anna Elena Olga Natalia Irina Tatiana Svetlana Yulia"),
        _names("Ivanov Petrov Smirnov Volkov Kuznetsov Sokolov Popov Lebedev"),
        feminine_suffix="a",
    ),
)
_CULTURE_WEIGHTS = tuple(c.weight for c in CULTURES)

# City, ZIP codes, county, telephone area codes.
CITIES: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...]], ...] = (
    ("Boston", ("02118", "02119", "02124", "02125", "02130", "02134", "02135"), "Suffolk County", ("617", "857")),
    ("Cambridge", ("02138", "02139", "02140"), "Middlesex County", ("617", "857")),
    ("Somerville", ("02143", "02144", "02145"), "Middlesex County", ("617", "857")),
    ("Quincy", ("02169", "02170", "02171"), "Norfolk County", ("617", "857")),
    ("Brookline", ("02445", "02446"), "Norfolk County", ("617",)),
    ("Newton", ("02458", "02459", "02460"), "Middlesex County", ("617",)),
    ("Medford", ("02155",), "Middlesex County", ("781", "339")),
    ("Malden", ("02148",), "Middlesex County", ("781", "339")),
    ("Everett", ("02149",), "Middlesex County", ("617",)),
    ("Chelsea", ("02150",), "Suffolk County", ("617",)),
    ("Revere", ("02151",), "Suffolk County", ("781",)),
    ("Waltham", ("02451", "02453"), "Middlesex County", ("781", "339")),
    ("Watertown", ("02472",), "Middlesex County", ("617",)),
    ("Arlington", ("02474", "02476"), "Middlesex County", ("781",)),
    ("Braintree", ("02184",), "Norfolk County", ("781",)),
    ("Milton", ("02186",), "Norfolk County", ("617",)),
    ("Lynn", ("01902", "01904", "01905"), "Essex County", ("781", "339")),
)
STREETS = (
    "Massachusetts Ave",
    "Washington St",
    "Beacon St",
    "Centre St",
    "Hancock St",
    "Broadway",
    "Main St",
    "Elm St",
    "Pleasant St",
    "School St",
    "Highland Ave",
    "Prospect St",
    "Harvard St",
    "Columbia Rd",
    "Dorchester Ave",
    "Cambridge St",
    "Tremont St",
    "Salem St",
    "Adams St",
    "Summer St",
    "Maple Ave",
    "Chestnut St",
    "Walnut St",
    "Park Ave",
    "Franklin St",
    "Union St",
    "Water St",
    "Green St",
)

# (min age, ((code, weight), ...)) for the v3 MaritalStatus codes.
MARITAL_BY_AGE: tuple[tuple[int, tuple[tuple[str, float], ...]], ...] = (
    (18, (("S", 0.70), ("M", 0.27), ("D", 0.03))),
    (30, (("M", 0.58), ("S", 0.28), ("D", 0.12), ("L", 0.02))),
    (50, (("M", 0.62), ("D", 0.17), ("S", 0.13), ("W", 0.06), ("L", 0.02))),
    (70, (("M", 0.50), ("W", 0.30), ("D", 0.12), ("S", 0.08))),
)
MARITAL_DISPLAY = {"M": "Married", "S": "Never Married", "D": "Divorced", "W": "Widowed", "L": "Legally Separated"}

# Share of the population per age band (roughly the US census pyramid).
AGE_BANDS: tuple[tuple[int, int, float], ...] = (
    (0, 5, 0.06),
    (5, 18, 0.16),
    (18, 30, 0.16),
    (30, 45, 0.20),
    (45, 65, 0.25),
    (65, 80, 0.13),
    (80, 98, 0.04),
)

# ---------------------------------------------------------------------------------------------------------------
# The shared pool: organizations, locations, staff
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Site:
    """An organization of the health system and its main location."""

    key: str
    org_name: str
    parent: str | None
    location_name: str
    location_part_of: str | None
    location_type: tuple[str, str]  # v3-RoleCode
    physical_type: tuple[str, str]  # location-physical-type
    line: str
    city: str
    postal: str
    phone: str
    position: tuple[float, float]  # latitude, longitude
    has_org: bool = True
    has_location: bool = True


SITES: tuple[_Site, ...] = (
    _Site(
        key="system",
        org_name="Salus Health",
        parent=None,
        location_name="",
        location_part_of=None,
        location_type=("", ""),
        physical_type=("", ""),
        line="800 Boylston St",
        city="Boston",
        postal="02199",
        phone="617-555-0100",
        position=(42.3478, -71.0825),
        has_location=False,
    ),
    _Site(
        key="hospital",
        org_name="Salus General Hospital",
        parent="system",
        location_name="Salus General Hospital Main Campus",
        location_part_of=None,
        location_type=("HOSP", "Hospital"),
        physical_type=("bu", "Building"),
        line="1200 Commonwealth Ave",
        city="Boston",
        postal="02134",
        phone="617-555-0110",
        position=(42.3505, -71.1300),
    ),
    _Site(
        key="ed",
        org_name="",
        parent=None,
        location_name="Salus General Hospital Emergency Department",
        location_part_of="hospital",
        location_type=("ER", "Emergency room"),
        physical_type=("wi", "Wing"),
        line="1200 Commonwealth Ave",
        city="Boston",
        postal="02134",
        phone="617-555-0111",
        position=(42.3507, -71.1296),
        has_org=False,
    ),
    _Site(
        key="ward",
        org_name="",
        parent=None,
        location_name="Salus General Hospital Inpatient Unit 5 West",
        location_part_of="hospital",
        location_type=("HU", "Hospital unit"),
        physical_type=("wa", "Ward"),
        line="1200 Commonwealth Ave",
        city="Boston",
        postal="02134",
        phone="617-555-0112",
        position=(42.3504, -71.1303),
        has_org=False,
    ),
    _Site(
        key="cambridge",
        org_name="Salus Primary Care Cambridge",
        parent="system",
        location_name="Salus Primary Care Cambridge",
        location_part_of=None,
        location_type=("FMC", "Family Medicine clinic"),
        physical_type=("bu", "Building"),
        line="2240 Massachusetts Ave",
        city="Cambridge",
        postal="02140",
        phone="617-555-0120",
        position=(42.3963, -71.1255),
    ),
    _Site(
        key="quincy",
        org_name="Salus Primary Care Quincy",
        parent="system",
        location_name="Salus Primary Care Quincy",
        location_part_of=None,
        location_type=("FMC", "Family Medicine clinic"),
        physical_type=("bu", "Building"),
        line="1100 Hancock St",
        city="Quincy",
        postal="02169",
        phone="617-555-0130",
        position=(42.2519, -71.0023),
    ),
    _Site(
        key="brookline",
        org_name="Salus Children's Health Brookline",
        parent="system",
        location_name="Salus Children's Health Brookline",
        location_part_of=None,
        location_type=("PEDC", "Pediatrics clinic"),
        physical_type=("bu", "Building"),
        line="1350 Beacon St",
        city="Brookline",
        postal="02446",
        phone="617-555-0140",
        position=(42.3420, -71.1218),
    ),
    _Site(
        key="lab",
        org_name="Salus Clinical Laboratory",
        parent="system",
        location_name="Salus Clinical Laboratory",
        location_part_of="hospital",
        location_type=("HLAB", "hospital laboratory"),
        physical_type=("wi", "Wing"),
        line="1200 Commonwealth Ave",
        city="Boston",
        postal="02134",
        phone="617-555-0150",
        position=(42.3502, -71.1299),
    ),
)
_SITE_ORG = {"ed": "hospital", "ward": "hospital"}  # locations without an organization of their own

# (specialty key, SNOMED code, display, site, head count). Fixed so the pool never depends on the patient count.
STAFF: tuple[tuple[str, str, str, str, int], ...] = (
    ("family", "419772000", "Family practice", "cambridge", 8),
    ("family", "419772000", "Family practice", "quincy", 8),
    ("pediatrics", "394537008", "Pediatric specialty", "brookline", 6),
    ("emergency", "773568002", "Emergency medicine", "ed", 5),
    ("hospitalist", "394802001", "General medicine", "ward", 4),
    ("cardiology", "394579002", "Cardiology", "hospital", 2),
    ("endocrinology", "394583002", "Endocrinology", "hospital", 1),
    ("pulmonology", "418112009", "Pulmonary medicine", "hospital", 1),
    ("nephrology", "394589003", "Nephrology", "hospital", 1),
)
POOL_SIZE = sum(s.has_org for s in SITES) + sum(s.has_location for s in SITES) + 2 * sum(row[4] for row in STAFF)

# ---------------------------------------------------------------------------------------------------------------
# Encounters, procedures, vaccines
# ---------------------------------------------------------------------------------------------------------------

ENCOUNTER_CLASS = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient encounter"}
ENCOUNTER_TYPES: dict[str, tuple[str, str]] = {
    "wellness_adult": ("162673000", "General examination of patient"),
    "wellness_child": ("410620009", "Well child visit"),
    "followup": ("390906007", "Follow-up encounter"),
    "acute": ("185345009", "Encounter for symptom"),
    "emergency": ("50849002", "Emergency room admission"),
    "inpatient": ("32485007", "Hospital admission"),
}

PROCEDURES: dict[str, tuple[str, str]] = {
    "med_reconciliation": ("430193006", "Medication reconciliation"),
    "depression_screening": ("171207006", "Depression screening"),
    "throat_culture": ("117015009", "Throat culture"),
    "urine_culture": ("117010004", "Urine culture"),
    "chest_xray": ("399208008", "Plain chest X-ray"),
    "ecg": ("29303009", "Electrocardiographic procedure"),
    "echo": ("40701008", "Echocardiography"),
    "spirometry": ("127783003", "Spirometry"),
    "suture": ("288086009", "Suture open wound"),
    "appendectomy": ("80146002", "Appendectomy"),
    "colonoscopy": ("73761001", "Colonoscopy"),
    "mammography": ("24623002", "Screening mammography"),
}

# CVX code, CVX short description, v3 route code, route display.
VACCINES: dict[str, tuple[str, str, str, str]] = {
    "hepb_ped": ("08", "Hep B, adolescent or pediatric", "IM", "Injection, intramuscular"),
    "rotavirus": ("119", "rotavirus, monovalent", "PO", "Swallow, oral"),
    "dtap": ("20", "DTaP", "IM", "Injection, intramuscular"),
    "hib": ("49", "Hib (PRP-OMP)", "IM", "Injection, intramuscular"),
    "pcv13": ("133", "Pneumococcal conjugate PCV 13", "IM", "Injection, intramuscular"),
    "ipv": ("10", "IPV", "IM", "Injection, intramuscular"),
    "mmr": ("03", "MMR", "SQ", "Injection, subcutaneous"),
    "varicella": ("21", "varicella", "SQ", "Injection, subcutaneous"),
    "hepa": ("83", "Hep A, ped/adol, 2 dose", "IM", "Injection, intramuscular"),
    "tdap": ("115", "Tdap", "IM", "Injection, intramuscular"),
    "hpv9": ("165", "HPV9", "IM", "Injection, intramuscular"),
    "mcv4": ("114", "meningococcal MCV4P", "IM", "Injection, intramuscular"),
    "td": ("113", "Td (adult) preservative free", "IM", "Injection, intramuscular"),
    "flu_quadrivalent": (
        "150",
        "Influenza, injectable, quadrivalent, preservative free",
        "IM",
        "Injection, intramuscular",
    ),
    "flu_trivalent": ("140", "Influenza, seasonal, injectable, preservative free", "IM", "Injection, intramuscular"),
    "covid_mrna": ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", "IM", "Injection, intramuscular"),
    "zoster": ("187", "zoster recombinant", "IM", "Injection, intramuscular"),
    "ppsv23": ("33", "pneumococcal polysaccharide PPV23", "IM", "Injection, intramuscular"),
}

# Age in months at the well-child visit, vaccines due there (CDC childhood schedule, simplified).
CHILD_SCHEDULE: dict[int, tuple[str, ...]] = {
    0: ("hepb_ped",),
    1: ("hepb_ped",),
    2: ("rotavirus", "dtap", "hib", "pcv13", "ipv"),
    4: ("rotavirus", "dtap", "hib", "pcv13", "ipv"),
    6: ("hepb_ped", "dtap", "pcv13", "ipv"),
    12: ("hib", "pcv13", "mmr", "varicella", "hepa"),
    15: ("dtap",),
    18: ("hepa",),
    48: ("dtap", "ipv", "mmr", "varicella"),
    132: ("tdap", "hpv9", "mcv4"),
    144: ("hpv9",),
    192: ("mcv4",),
}
WELL_CHILD_MONTHS = (0, 1, 2, 4, 6, 9, 12, 15, 18, 24, 30, 36, *range(48, 216, 12))

# ---------------------------------------------------------------------------------------------------------------
# Medications (RxNorm clinical drugs)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Med:
    """A prescribable product and its usual sig."""

    code: str
    display: str
    sig: str
    frequency: int  # administrations per day
    dose: float
    dose_unit: str  # UCUM annotation such as {tbl}
    as_needed: bool = False
    course_days: int = 0  # 0 for a long-term medication
    penicillin: bool = False  # contraindicated by a penicillin allergy


MEDS: dict[str, _Med] = {
    "lisinopril": _Med("314076", "lisinopril 10 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"),
    "amlodipine": _Med("197361", "Amlodipine 5 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"),
    "hctz": _Med(
        "310798", "Hydrochlorothiazide 25 MG Oral Tablet", "Take 1 tablet by mouth every morning", 1, 1, "{tbl}"
    ),
    "metformin": _Med(
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
        "Take 1 tablet by mouth once daily with the evening meal",
        1,
        1,
        "{tbl}",
    ),
    "canagliflozin": _Med(
        "1373463",
        "canagliflozin 100 MG Oral Tablet",
        "Take 1 tablet by mouth once daily before the first meal",
        1,
        1,
        "{tbl}",
    ),
    "atorvastatin": _Med(
        "259255", "Atorvastatin 80 MG Oral Tablet", "Take 1 tablet by mouth once daily at bedtime", 1, 1, "{tbl}"
    ),
    "simvastatin": _Med(
        "312961", "Simvastatin 20 MG Oral Tablet", "Take 1 tablet by mouth once daily in the evening", 1, 1, "{tbl}"
    ),
    "clopidogrel": _Med("309362", "Clopidogrel 75 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"),
    "nitroglycerin": _Med(
        "705129",
        "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray",
        "Spray 1 dose under the tongue every 5 minutes as needed for chest pain, up to 3 doses",
        3,
        1,
        "{spray}",
        as_needed=True,
    ),
    "metoprolol": _Med(
        "866414",
        "24 HR metoprolol succinate 100 MG Extended Release Oral Tablet",
        "Take 1 tablet by mouth once daily",
        1,
        1,
        "{tbl}",
    ),
    "warfarin": _Med(
        "855332",
        "Warfarin Sodium 5 MG Oral Tablet",
        "Take 1 tablet by mouth once daily in the evening, adjust to INR",
        1,
        1,
        "{tbl}",
    ),
    "furosemide": _Med("313988", "Furosemide 40 MG Oral Tablet", "Take 1 tablet by mouth every morning", 1, 1, "{tbl}"),
    "albuterol": _Med(
        "2123111",
        "NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
        "Inhale 2 puffs every 4 to 6 hours as needed for wheezing or shortness of breath",
        4,
        2,
        "{puff}",
        as_needed=True,
    ),
    "fluticasone": _Med(
        "895994",
        "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
        "Inhale 2 puffs twice daily, rinse mouth after use",
        2,
        2,
        "{puff}",
    ),
    "fluticasone_salmeterol": _Med(
        "896209",
        "60 ACTUAT Fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler",
        "Inhale 1 puff twice daily",
        2,
        1,
        "{puff}",
    ),
    "levothyroxine": _Med(
        "966222",
        "Levothyroxine Sodium 0.075 MG Oral Tablet",
        "Take 1 tablet by mouth every morning on an empty stomach",
        1,
        1,
        "{tbl}",
    ),
    "sertraline": _Med("312938", "Sertraline 100 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"),
    "fluoxetine": _Med(
        "310385", "fluoxetine 20 MG Oral Capsule", "Take 1 capsule by mouth every morning", 1, 1, "{cap}"
    ),
    "naproxen": _Med(
        "849574",
        "Naproxen sodium 220 MG Oral Tablet",
        "Take 1 tablet by mouth every 12 hours as needed for pain, with food",
        2,
        1,
        "{tbl}",
        as_needed=True,
        course_days=10,
    ),
    "acetaminophen": _Med(
        "313782",
        "Acetaminophen 325 MG Oral Tablet",
        "Take 2 tablets by mouth every 6 hours as needed for pain or fever",
        4,
        2,
        "{tbl}",
        as_needed=True,
        course_days=7,
    ),
    "acetaminophen_chewable": _Med(
        "313820",
        "Acetaminophen 160 MG Chewable Tablet",
        "Chew 1 tablet every 6 hours as needed for pain or fever",
        4,
        1,
        "{tbl}",
        as_needed=True,
        course_days=5,
    ),
    "ibuprofen": _Med(
        "310965",
        "Ibuprofen 200 MG Oral Tablet",
        "Take 2 tablets by mouth every 6 to 8 hours as needed for pain, with food",
        3,
        2,
        "{tbl}",
        as_needed=True,
        course_days=10,
    ),
    "ferrous_sulfate": _Med(
        "310325", "ferrous sulfate 325 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"
    ),
    "cetirizine": _Med(
        "1014678", "cetirizine hydrochloride 10 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"
    ),
    "loratadine": _Med("311372", "Loratadine 10 MG Oral Tablet", "Take 1 tablet by mouth once daily", 1, 1, "{tbl}"),
    "amoxicillin": _Med(
        "308182",
        "Amoxicillin 250 MG Oral Capsule",
        "Take 2 capsules by mouth three times daily for 10 days",
        3,
        2,
        "{cap}",
        course_days=10,
        penicillin=True,
    ),
    "amoxicillin_clavulanate": _Med(
        "562251",
        "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet",
        "Take 1 tablet by mouth every 8 hours for 7 days",
        3,
        1,
        "{tbl}",
        course_days=7,
        penicillin=True,
    ),
    "penicillin_v": _Med(
        "834061",
        "Penicillin V Potassium 250 MG Oral Tablet",
        "Take 1 tablet by mouth four times daily for 10 days",
        4,
        1,
        "{tbl}",
        course_days=10,
        penicillin=True,
    ),
    "azithromycin": _Med(
        "308460",
        "Azithromycin 250 MG Oral Tablet",
        "Take 2 tablets by mouth on day 1, then 1 tablet once daily on days 2 to 5",
        1,
        1,
        "{tbl}",
        course_days=5,
    ),
    "nitrofurantoin": _Med(
        "311995",
        "nitrofurantoin, macrocrystals 50 MG Oral Capsule",
        "Take 1 capsule by mouth four times daily for 7 days",
        4,
        1,
        "{cap}",
        course_days=7,
    ),
    "phenazopyridine": _Med(
        "1094107",
        "Phenazopyridine hydrochloride 100 MG Oral Tablet",
        "Take 1 tablet by mouth three times daily after meals for 2 days",
        3,
        1,
        "{tbl}",
        course_days=2,
    ),
}

# UCUM annotations of dose units and how a prescription spells them.
DOSE_UNITS = {"{tbl}": "tablet", "{cap}": "capsule", "{puff}": "puff", "{spray}": "spray"}

# ---------------------------------------------------------------------------------------------------------------
# Vital signs and laboratory analytes (LOINC, UCUM)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Measure:
    """A LOINC-coded quantity: how to code it, print it and judge it."""

    code: str
    display: str
    unit: str  # human-readable unit
    ucum: str
    decimals: int
    low: tuple[float | None, float | None] = (None, None)  # reference low for (male, female)
    high: tuple[float | None, float | None] = (None, None)  # reference high for (male, female)
    extra_codes: tuple[tuple[str, str], ...] = ()  # further LOINC codings required by the vital-signs profile


VITALS: dict[str, _Measure] = {
    "hr": _Measure("8867-4", "Heart rate", "/min", "/min", 0),
    "rr": _Measure("9279-1", "Respiratory rate", "/min", "/min", 0),
    "temp": _Measure("8310-5", "Body temperature", "°C", "Cel", 1),
    "spo2": _Measure(
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        "%",
        0,
        extra_codes=(("2708-6", "Oxygen saturation in Arterial blood"),),
    ),
    "height": _Measure("8302-2", "Body height", "cm", "cm", 1),
    "weight": _Measure("29463-7", "Body weight", "kg", "kg", 1),
    "bmi": _Measure("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", "kg/m2", 1),
    "sbp": _Measure("8480-6", "Systolic blood pressure", "mmHg", "mm[Hg]", 0),
    "dbp": _Measure("8462-4", "Diastolic blood pressure", "mmHg", "mm[Hg]", 0),
}
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")

LABS: dict[str, _Measure] = {
    "glucose_blood": _Measure("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 0, (70, 70), (99, 99)),
    "glucose": _Measure("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0, (70, 70), (99, 99)),
    "bun": _Measure("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0, (7, 7), (20, 20)),
    "creat": _Measure(
        "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 2, (0.74, 0.59), (1.35, 1.04)
    ),
    "na": _Measure("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 0, (135, 135), (145, 145)),
    "k": _Measure(
        "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 1, (3.5, 3.5), (5.1, 5.1)
    ),
    "cl": _Measure("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 0, (98, 98), (107, 107)),
    "co2": _Measure(
        "2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 0, (22, 22), (29, 29)
    ),
    "ca": _Measure(
        "17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 1, (8.6, 8.6), (10.3, 10.3)
    ),
    "albumin": _Measure(
        "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", "g/dL", 1, (3.5, 3.5), (5.0, 5.0)
    ),
    "protein": _Measure(
        "2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", "g/dL", 1, (6.0, 6.0), (8.3, 8.3)
    ),
    "alt": _Measure(
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        "U/L",
        0,
        (7, 7),
        (56, 56),
    ),
    "ast": _Measure(
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        "U/L",
        0,
        (10, 10),
        (40, 40),
    ),
    "alp": _Measure(
        "6768-6",
        "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        "U/L",
        0,
        (44, 44),
        (147, 147),
    ),
    "bili": _Measure(
        "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 1, (0.1, 0.1), (1.2, 1.2)
    ),
    "wbc": _Measure(
        "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", "10*3/uL", 1, (4.5, 4.5), (11.0, 11.0)
    ),
    "rbc": _Measure(
        "789-8",
        "Erythrocytes [#/volume] in Blood by Automated count",
        "10*6/uL",
        "10*6/uL",
        2,
        (4.35, 3.92),
        (5.65, 5.13),
    ),
    "hgb": _Measure("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL", 1, (13.2, 11.6), (16.6, 15.0)),
    "hct": _Measure(
        "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", "%", 1, (38.3, 35.5), (48.6, 44.9)
    ),
    "plt": _Measure(
        "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "10*3/uL", 0, (150, 150), (450, 450)
    ),
    "a1c": _Measure("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%", 1, (4.0, 4.0), (5.6, 5.6)),
    "chol": _Measure("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0, high=(199, 199)),
    "tg": _Measure("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0, high=(149, 149)),
    "hdl": _Measure("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0, low=(40, 50)),
    "ldl": _Measure(
        "18262-6",
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
        "mg/dL",
        "mg/dL",
        0,
        high=(99, 99),
    ),
}

# Panel key -> (LOINC code, display, member analytes in report order).
PANELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "bmp": (
        "51990-0",
        "Basic metabolic panel - Blood",
        ("glucose_blood", "bun", "creat", "na", "k", "cl", "co2", "ca"),
    ),
    "cmp": (
        "24323-8",
        "Comprehensive metabolic 2000 panel - Serum or Plasma",
        ("glucose", "bun", "creat", "na", "k", "cl", "co2", "ca", "albumin", "protein", "alt", "ast", "alp", "bili"),
    ),
    "cbc": ("58410-2", "CBC panel - Blood by Automated count", ("wbc", "rbc", "hgb", "hct", "plt")),
    "lipid": ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", ("chol", "tg", "hdl", "ldl")),
    "a1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", ("a1c",)),
}

# ---------------------------------------------------------------------------------------------------------------
# Physiology: what a healthy person measures, how far people differ, how much a visit varies
# ---------------------------------------------------------------------------------------------------------------

# Age (years) -> value tables, linearly interpolated; adults continue from the last row.
HEIGHT_BY_AGE = {
    "male": (
        (0, 50.0),
        (0.25, 61.0),
        (0.5, 67.5),
        (1, 76.0),
        (2, 87.0),
        (3, 96.0),
        (4, 103.0),
        (6, 116.0),
        (8, 128.0),
        (10, 138.0),
        (12, 149.0),
        (13, 156.0),
        (14, 164.0),
        (15, 170.0),
        (16, 174.0),
        (18, 177.0),
    ),
    "female": (
        (0, 49.0),
        (0.25, 59.5),
        (0.5, 65.5),
        (1, 74.0),
        (2, 86.0),
        (3, 95.0),
        (4, 102.0),
        (6, 115.0),
        (8, 127.0),
        (10, 138.0),
        (12, 151.0),
        (13, 157.0),
        (14, 160.0),
        (15, 162.0),
        (16, 163.0),
        (18, 163.0),
    ),
}
BMI_BY_AGE = (
    (0, 13.4),
    (0.25, 16.5),
    (0.5, 17.2),
    (1, 17.0),
    (2, 16.4),
    (3, 15.9),
    (5, 15.4),
    (7, 15.5),
    (9, 16.2),
    (11, 17.2),
    (13, 18.4),
    (15, 19.6),
    (17, 20.7),
    (18, 22.0),
    (30, 26.8),
    (45, 28.7),
    (60, 29.0),
    (75, 27.8),
    (90, 25.5),
)
HR_BY_AGE = ((0, 140), (0.5, 130), (1, 120), (2, 110), (4, 100), (6, 95), (10, 85), (14, 78), (18, 73))
RR_BY_AGE = ((0, 42), (0.5, 35), (1, 30), (2, 26), (4, 24), (6, 22), (10, 20), (14, 18), (18, 16))
SBP_BY_AGE = ((3, 95), (6, 100), (10, 105), (14, 112), (18, 114), (25, 115), (45, 123), (65, 131), (85, 138))
DBP_BY_AGE = ((3, 56), (10, 63), (14, 67), (18, 70), (25, 72), (50, 78), (65, 75), (85, 70))

# Adult means of the laboratory signals; (male, female) where they differ.
LAB_MEANS: dict[str, tuple[float, float]] = {
    "a1c": (5.3, 5.3),
    "bun": (14, 13),
    "creat": (0.95, 0.75),
    "na": (140, 140),
    "k": (4.2, 4.2),
    "cl": (103, 103),
    "co2": (25.5, 25.5),
    "ca": (9.5, 9.4),
    "albumin": (4.3, 4.2),
    "protein": (7.1, 7.1),
    "alt": (26, 19),
    "ast": (24, 21),
    "alp": (75, 72),
    "bili": (0.6, 0.5),
    "wbc": (6.8, 7.0),
    "hgb": (15.0, 13.4),
    "plt": (240, 265),
    "chol": (180, 186),
    "tg": (115, 105),
    "hdl": (47, 59),
}
# How much people differ from each other (persistent) and how much one measurement differs from the next.
PERSON_SD: dict[str, float] = {
    "hr": 6,
    "rr": 1,
    "temp": 0.15,
    "spo2": 0.6,
    "sbp": 7,
    "dbp": 5,
    "a1c": 0.22,
    "bun": 3,
    "creat": 0.1,
    "na": 1.5,
    "k": 0.2,
    "cl": 1.5,
    "co2": 1.4,
    "ca": 0.22,
    "albumin": 0.22,
    "protein": 0.3,
    "alt": 6,
    "ast": 5,
    "alp": 16,
    "bili": 0.18,
    "wbc": 1.3,
    "hgb": 0.8,
    "plt": 45,
    "chol": 24,
    "tg": 30,
    "hdl": 8,
}
VISIT_SD: dict[str, float] = {
    "hr": 5,
    "rr": 1.2,
    "temp": 0.2,
    "spo2": 0.7,
    "sbp": 6,
    "dbp": 4,
    "a1c": 0.15,
    "bun": 2,
    "creat": 0.06,
    "na": 1.2,
    "k": 0.18,
    "cl": 1.2,
    "co2": 1.1,
    "ca": 0.15,
    "albumin": 0.15,
    "protein": 0.2,
    "alt": 4,
    "ast": 3,
    "alp": 8,
    "bili": 0.12,
    "wbc": 0.8,
    "hgb": 0.35,
    "plt": 18,
    "chol": 10,
    "tg": 22,
    "hdl": 4,
}
# Physiological bounds so no combination of effects produces an impossible value.
BOUNDS: dict[str, tuple[float, float]] = {
    "hr": (40, 190),
    "rr": (8, 64),
    "temp": (35.6, 40.6),
    "spo2": (85, 100),
    "sbp": (78, 215),
    "dbp": (38, 128),
    "a1c": (4.0, 13.5),
    "glucose": (60, 420),
    "bun": (5, 70),
    "creat": (0.4, 4.5),
    "na": (125, 149),
    "k": (3.0, 6.3),
    "cl": (92, 112),
    "co2": (17, 33),
    "ca": (7.9, 10.9),
    "albumin": (2.7, 5.3),
    "protein": (5.4, 8.9),
    "alt": (5, 140),
    "ast": (8, 120),
    "alp": (30, 200),
    "bili": (0.1, 2.8),
    "wbc": (2.4, 26),
    "hgb": (6.8, 18.8),
    "plt": (80, 620),
    "chol": (95, 330),
    "tg": (35, 650),
    "hdl": (18, 105),
    "ldl": (25, 240),
}

# Additive effect of an active condition, a current medication, or an acute illness on a signal.
CONDITION_EFFECTS: dict[str, dict[str, float]] = {
    "obesity": {"tg": 30, "hdl": -4, "alt": 8},
    "prediabetes": {"a1c": 0.75},
    "diabetes": {"a1c": 2.5, "tg": 45, "hdl": -5},
    "hypertension": {"sbp": 24, "dbp": 11},
    "hyperlipidemia": {"chol": 58, "tg": 40},
    "ckd": {"creat": 0.75, "bun": 13, "k": 0.35, "hgb": -1.1, "co2": -2},
    "heart_failure": {"spo2": -1.5, "na": -2.5, "bun": 5, "hr": 6},
    "afib": {"hr": 12},
    "copd": {"spo2": -4.5, "rr": 3, "co2": 2},
    "anemia": {"hgb": -2.8},
    "cad": {"sbp": 4},
}
MEDICATION_EFFECTS: dict[str, dict[str, float]] = {
    "lisinopril": {"sbp": -11, "dbp": -6, "k": 0.2},
    "amlodipine": {"sbp": -9, "dbp": -5},
    "hctz": {"sbp": -9, "dbp": -4, "k": -0.25},
    "metoprolol": {"hr": -12, "sbp": -5, "dbp": -3},
    "metformin": {"a1c": -1.0},
    "canagliflozin": {"a1c": -0.7},
    "atorvastatin": {"chol": -65, "tg": -25},
    "simvastatin": {"chol": -45, "tg": -15},
    "furosemide": {"k": -0.3, "na": -1.0, "bun": 3},
    "ferrous_sulfate": {"hgb": 1.4},
    "levothyroxine": {"chol": -5},
}

# ---------------------------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chronic:
    """A long-term condition: how common it is, what raises the odds, how it is treated and watched."""

    key: str
    code: str
    display: str
    prevalence: tuple[tuple[float, float], ...]  # (from age, probability at the reference date)
    male: float = 1.0  # prevalence multiplier by physiological sex
    female: float = 1.0
    risk: tuple[tuple[str, float], ...] = ()  # (earlier condition, odds multiplier)
    excludes: tuple[str, ...] = ()
    meds: tuple[tuple[str, float], ...] = ()  # (medication, probability it is prescribed at diagnosis)
    followup: bool = False  # needs periodic follow-up visits
    followup_labs: tuple[tuple[str, float], ...] = ()
    followup_procedures: tuple[tuple[str, float], ...] = ()
    specialist: str | None = None  # who sees the patient at some follow-ups


CHRONIC: tuple[_Chronic, ...] = (
    _Chronic(
        "diabetes",
        "44054006",
        "Type 2 diabetes mellitus",
        ((18, 0.02), (35, 0.06), (50, 0.13), (65, 0.21)),
        risk=(("obesity", 2.6),),
        meds=(("metformin", 0.88), ("canagliflozin", 0.2)),
        followup=True,
        followup_labs=(("a1c", 0.95), ("bmp", 0.4)),
        specialist="endocrinology",
    ),
    _Chronic(
        "prediabetes",
        "15777000",
        "Prediabetes",
        ((18, 0.06), (40, 0.14), (60, 0.18)),
        risk=(("obesity", 1.9),),
        excludes=("diabetes",),
    ),
    _Chronic(
        "hypertension",
        "59621000",
        "Essential hypertension",
        ((18, 0.05), (35, 0.16), (50, 0.34), (65, 0.55), (80, 0.68)),
        male=1.1,
        female=0.92,
        risk=(("obesity", 1.6), ("diabetes", 1.5)),
        meds=(("lisinopril", 0.6), ("amlodipine", 0.35), ("hctz", 0.3)),
        followup=True,
        followup_labs=(("bmp", 0.25),),
    ),
    _Chronic(
        "hyperlipidemia",
        "55822004",
        "Hyperlipidemia",
        ((20, 0.04), (35, 0.11), (50, 0.25), (65, 0.36)),
        risk=(("diabetes", 1.5), ("obesity", 1.3)),
        meds=(("atorvastatin", 0.55), ("simvastatin", 0.3)),
    ),
    _Chronic(
        "ckd",
        "433144002",
        "Chronic kidney disease stage 3",
        ((40, 0.015), (60, 0.05), (75, 0.12)),
        risk=(("diabetes", 2.5), ("hypertension", 2.0)),
        followup=True,
        followup_labs=(("bmp", 0.9), ("cbc", 0.4)),
        specialist="nephrology",
    ),
    _Chronic(
        "cad",
        "53741008",
        "Coronary arteriosclerosis",
        ((45, 0.025), (65, 0.08), (80, 0.13)),
        male=1.6,
        female=0.6,
        risk=(("diabetes", 2.0), ("hyperlipidemia", 1.8), ("hypertension", 1.5)),
        meds=(("clopidogrel", 0.5), ("atorvastatin", 0.7), ("nitroglycerin", 0.4), ("metoprolol", 0.5)),
        followup=True,
        followup_procedures=(("ecg", 0.4),),
        specialist="cardiology",
    ),
    _Chronic(
        "afib",
        "49436004",
        "Atrial fibrillation",
        ((55, 0.015), (65, 0.045), (80, 0.09)),
        male=1.2,
        female=0.85,
        risk=(("hypertension", 1.4),),
        meds=(("warfarin", 0.6), ("metoprolol", 0.7)),
        followup=True,
        followup_procedures=(("ecg", 0.5),),
        specialist="cardiology",
    ),
    _Chronic(
        "heart_failure",
        "84114007",
        "Heart failure",
        ((55, 0.01), (65, 0.025), (80, 0.06)),
        risk=(("cad", 3.0), ("hypertension", 1.8), ("afib", 2.0)),
        meds=(("furosemide", 0.9), ("metoprolol", 0.6), ("lisinopril", 0.5)),
        followup=True,
        followup_labs=(("bmp", 0.8),),
        followup_procedures=(("echo", 0.25),),
        specialist="cardiology",
    ),
    _Chronic(
        "asthma",
        "195967001",
        "Asthma",
        ((3, 0.08),),
        meds=(("albuterol", 0.95), ("fluticasone", 0.5)),
        followup=True,
        followup_procedures=(("spirometry", 0.3),),
        specialist="pulmonology",
    ),
    _Chronic(
        "copd",
        "13645005",
        "Chronic obstructive lung disease",
        ((40, 0.02), (60, 0.065), (75, 0.1)),
        excludes=("asthma",),
        meds=(("albuterol", 0.9), ("fluticasone_salmeterol", 0.6)),
        followup=True,
        followup_procedures=(("spirometry", 0.45),),
        specialist="pulmonology",
    ),
    _Chronic(
        "hypothyroidism",
        "40930008",
        "Hypothyroidism",
        ((18, 0.02), (45, 0.05), (65, 0.08)),
        male=0.4,
        female=1.6,
        meds=(("levothyroxine", 0.95),),
    ),
    _Chronic(
        "depression",
        "35489007",
        "Depressive disorder",
        ((12, 0.04), (18, 0.08)),
        male=0.7,
        female=1.3,
        meds=(("sertraline", 0.45), ("fluoxetine", 0.3)),
    ),
    _Chronic(
        "anxiety",
        "197480006",
        "Anxiety disorder",
        ((10, 0.04), (18, 0.08)),
        male=0.7,
        female=1.3,
        meds=(("sertraline", 0.3),),
    ),
    _Chronic(
        "osteoarthritis",
        "396275006",
        "Osteoarthritis",
        ((45, 0.08), (65, 0.24)),
        male=0.8,
        female=1.2,
        meds=(("naproxen", 0.4), ("acetaminophen", 0.35)),
    ),
    _Chronic(
        "anemia",
        "271737000",
        "Anemia",
        ((12, 0.02),),
        male=0.5,
        female=1.6,
        risk=(("ckd", 3.0),),
        meds=(("ferrous_sulfate", 0.7),),
    ),
    _Chronic(
        "allergic_rhinitis",
        "61582004",
        "Allergic rhinitis",
        ((3, 0.1),),
        meds=(("cetirizine", 0.5), ("loratadine", 0.3)),
    ),
    _Chronic(
        "migraine",
        "37796009",
        "Migraine",
        ((12, 0.05), (18, 0.08), (50, 0.05)),
        male=0.5,
        female=1.5,
        meds=(("ibuprofen", 0.4),),
    ),
)
# Obesity is not drawn from a prevalence: it follows from the person's BMI.
OBESITY = ("414916001", "Obesity")
_CHRONIC_BY_KEY = {c.key: c for c in CHRONIC}


@dataclass(frozen=True, slots=True)
class _Acute:
    """A short illness or injury: who gets it, where it is seen, and what is done."""

    key: str
    code: str
    display: str
    ages: tuple[float, float]
    weight: float
    settings: tuple[tuple[str, float], ...]  # (AMB | EMER | IMP, probability)
    fever: float = 0.0  # probability of a fever at the visit
    antibiotic: tuple[str, ...] = ()  # one of these is prescribed (penicillins skipped for allergic patients)
    antibiotic_rate: float = 0.0
    symptomatic: tuple[tuple[str, float], ...] = ()
    labs: tuple[str, ...] = ()
    procedures: tuple[tuple[str, float], ...] = ()
    days: tuple[int, int] = (5, 14)  # how long until it resolves
    effects: tuple[tuple[str, float], ...] = ()
    female: float = 1.0
    male: float = 1.0
    since: date | None = None  # the disease did not exist before
    seasonal: bool = False  # mostly November to March


ACUTE: tuple[_Acute, ...] = (
    _Acute(
        "sinusitis",
        "444814009",
        "Viral sinusitis",
        (2, 120),
        10,
        (("AMB", 1.0),),
        fever=0.3,
        symptomatic=(("acetaminophen", 0.4),),
        days=(7, 21),
    ),
    _Acute(
        "pharyngitis",
        "195662009",
        "Acute viral pharyngitis",
        (3, 120),
        8,
        (("AMB", 1.0),),
        fever=0.5,
        symptomatic=(("acetaminophen", 0.4),),
        procedures=(("throat_culture", 0.5),),
        days=(5, 10),
    ),
    _Acute(
        "strep",
        "43878008",
        "Streptococcal sore throat",
        (3, 60),
        4,
        (("AMB", 1.0),),
        fever=0.8,
        antibiotic=("penicillin_v", "amoxicillin"),
        antibiotic_rate=0.95,
        procedures=(("throat_culture", 0.9),),
        days=(5, 10),
    ),
    _Acute(
        "bronchitis",
        "10509002",
        "Acute bronchitis",
        (5, 120),
        8,
        (("AMB", 0.9), ("EMER", 0.1)),
        fever=0.4,
        symptomatic=(("acetaminophen", 0.5),),
        procedures=(("chest_xray", 0.2),),
        days=(10, 21),
    ),
    _Acute(
        "otitis",
        "65363002",
        "Otitis media",
        (0.5, 12),
        14,
        (("AMB", 1.0),),
        fever=0.5,
        antibiotic=("amoxicillin",),
        antibiotic_rate=0.8,
        days=(5, 10),
    ),
    _Acute(
        "uti",
        "68566005",
        "Urinary tract infectious disease",
        (12, 120),
        6,
        (("AMB", 0.9), ("EMER", 0.1)),
        fever=0.2,
        antibiotic=("nitrofurantoin",),
        antibiotic_rate=0.95,
        symptomatic=(("phenazopyridine", 0.5),),
        procedures=(("urine_culture", 0.6),),
        days=(3, 7),
        female=4.0,
        male=0.3,
    ),
    _Acute(
        "sprain",
        "44465007",
        "Sprain of ankle",
        (8, 75),
        5,
        (("AMB", 0.6), ("EMER", 0.4)),
        symptomatic=(("ibuprofen", 0.6), ("naproxen", 0.25)),
        days=(14, 42),
    ),
    _Acute(
        "gastroenteritis",
        "25374005",
        "Gastroenteritis",
        (0.5, 120),
        6,
        (("AMB", 0.75), ("EMER", 0.25)),
        fever=0.4,
        labs=("bmp",),
        days=(2, 7),
    ),
    _Acute(
        "influenza",
        "6142004",
        "Influenza",
        (0.5, 120),
        7,
        (("AMB", 0.9), ("EMER", 0.1)),
        fever=0.95,
        symptomatic=(("acetaminophen", 0.7),),
        days=(5, 14),
        seasonal=True,
    ),
    _Acute(
        "covid",
        "840539006",
        "COVID-19",
        (0.5, 120),
        7,
        (("AMB", 0.88), ("EMER", 0.1), ("IMP", 0.02)),
        fever=0.7,
        symptomatic=(("acetaminophen", 0.6),),
        days=(7, 21),
        effects=(("spo2", -1.5),),
        since=date(2020, 3, 1),
    ),
    _Acute(
        "pneumonia",
        "233604007",
        "Pneumonia",
        (0.5, 120),
        2,
        (("AMB", 0.5), ("EMER", 0.25), ("IMP", 0.25)),
        fever=0.85,
        antibiotic=("azithromycin", "amoxicillin_clavulanate"),
        antibiotic_rate=1.0,
        labs=("cbc", "bmp"),
        procedures=(("chest_xray", 0.9),),
        days=(14, 28),
        effects=(("wbc", 6.5), ("spo2", -5), ("rr", 6), ("hr", 12)),
    ),
    _Acute(
        "laceration",
        "284551006",
        "Laceration of forearm",
        (3, 90),
        3,
        (("AMB", 0.4), ("EMER", 0.6)),
        procedures=(("suture", 1.0),),
        days=(7, 14),
    ),
    _Acute(
        "appendicitis",
        "74400008",
        "Appendicitis",
        (5, 70),
        0.6,
        (("IMP", 1.0),),
        fever=0.6,
        labs=("cbc",),
        procedures=(("appendectomy", 1.0),),
        days=(14, 28),
        effects=(("wbc", 6.0), ("hr", 10)),
    ),
    _Acute(
        "chest_pain",
        "29857009",
        "Chest pain",
        (30, 120),
        2,
        (("EMER", 1.0),),
        labs=("cbc", "bmp"),
        procedures=(("ecg", 1.0), ("chest_xray", 0.5)),
        days=(1, 3),
        effects=(("hr", 8), ("sbp", 8)),
    ),
)
# How often people fall acutely ill, per year, by age.
ACUTE_RATE = ((0, 1.2), (5, 0.7), (18, 0.4), (65, 0.55))

# ---------------------------------------------------------------------------------------------------------------
# Allergies
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Allergen:
    """An allergen and its usual presentation."""

    category: str  # food | medication | environment
    system: str
    code: str
    display: str
    weight: float
    reactions: tuple[tuple[str, str], ...]  # SNOMED manifestations
    childhood: bool = False  # usually starts in early childhood
    criticality: str = "low"


_HIVES = ("247472004", "Wheal")
_RASH = ("271807003", "Eruption of skin")
_ANAPHYLAXIS = ("39579001", "Anaphylaxis")
_ANGIOEDEMA = ("402387002", "Allergic angioedema")
_DYSPNEA = ("267036007", "Dyspnea")
_ITCH = ("418290006", "Itching")
_RHINO = ("878820003", "Rhinoconjunctivitis")
_NAUSEA = ("422587007", "Nausea")
_DIARRHEA = ("62315008", "Diarrhea")
_COUGH = ("49727002", "Cough")

ALLERGENS: tuple[_Allergen, ...] = (
    _Allergen("medication", RXNORM, "7980", "penicillin G", 10, (_HIVES, _RASH, _ANAPHYLAXIS), criticality="high"),
    _Allergen("medication", RXNORM, "10180", "sulfamethoxazole", 4, (_RASH, _ITCH)),
    _Allergen("medication", RXNORM, "1191", "aspirin", 2, (_HIVES, _DYSPNEA)),
    _Allergen("medication", RXNORM, "5640", "ibuprofen", 1.5, (_HIVES, _ANGIOEDEMA)),
    _Allergen("medication", RXNORM, "2670", "codeine", 2, (_NAUSEA, _ITCH)),
    _Allergen("food", SNOMED, "762952008", "Peanut", 2, (_HIVES, _ANGIOEDEMA, _ANAPHYLAXIS), True, "high"),
    _Allergen("food", SNOMED, "442571000124108", "Tree nut", 1.2, (_HIVES, _ANGIOEDEMA, _ANAPHYLAXIS), True, "high"),
    _Allergen("food", SNOMED, "735029006", "Shellfish", 2.5, (_HIVES, _NAUSEA, _ANGIOEDEMA), criticality="high"),
    _Allergen("food", SNOMED, "735971005", "Fish", 0.8, (_RASH, _DYSPNEA, _RHINO)),
    _Allergen("food", SNOMED, "102263004", "Eggs (edible)", 1, (_HIVES, _RASH), True),
    _Allergen("food", SNOMED, "3718001", "Cow's milk", 1, (_DIARRHEA, _RASH), True),
    _Allergen("environment", SNOMED, "256277009", "Grass pollen", 4, (_RHINO, _COUGH)),
    _Allergen("environment", SNOMED, "260147004", "House dust mite", 3, (_RHINO, _COUGH)),
    _Allergen("environment", SNOMED, "264287008", "Animal dander", 3, (_RHINO, _ITCH)),
    _Allergen("environment", SNOMED, "111088007", "Latex", 1, (_HIVES, _ITCH)),
    _Allergen("environment", SNOMED, "288328004", "Bee venom", 1, (_HIVES, _ANAPHYLAXIS), criticality="high"),
)
_ALLERGEN_WEIGHTS = tuple(a.weight for a in ALLERGENS)

# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def _interp(table: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear lookup so physiology changes smoothly with age."""
    if x <= table[0][0]:
        return table[0][1]
    for (x0, y0), (x1, y1) in zip(table, table[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return table[-1][1]


def _step(table: tuple[tuple[float, float], ...], x: float) -> float:
    """Value of the last row whose threshold ``x`` has reached (0 before the first), for banded prevalences."""
    value = 0.0
    for threshold, v in table:
        if x < threshold:
            break
        value = v
    return value


@cache
def _dst(year: int) -> tuple[datetime, datetime]:
    """US Eastern daylight-saving bounds: second Sunday of March to first Sunday of November, 02:00 local."""
    march = date(year, 3, 8)
    november = date(year, 11, 1)
    start = march + timedelta(days=(6 - march.weekday()) % 7)
    end = november + timedelta(days=(6 - november.weekday()) % 7)
    return datetime(start.year, start.month, start.day, 2), datetime(end.year, end.month, end.day, 2)


def _ts(moment: datetime) -> str:
    """A local Boston time as a FHIR dateTime with its UTC offset, so timestamps carry their zone."""
    start, end = _dst(moment.year)
    return moment.isoformat(timespec="seconds") + ("-04:00" if start <= moment < end else "-05:00")


def _years(delta: timedelta) -> float:
    """Age in (fractional) years, for the physiology tables."""
    return delta.days / 365.25


def _new_id(rng: random.Random) -> str:
    """A version-4 UUID drawn from the seeded generator, so ids are unique yet reproducible."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def _npi(rng: random.Random) -> str:
    """A 10-digit number that passes the NPI Luhn check (prefix 80840), like a real one would."""
    base = rng.choice("12") + "".join(rng.choice("0123456789") for _ in range(8))
    total = 0
    for i, ch in enumerate(reversed("80840" + base)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return base + str((10 - total % 10) % 10)


def _ascii(text: str) -> str:
    """Letters only, accents stripped: the form used in e-mail addresses."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded if ch.isalnum()).lower()


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    """One Coding."""
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with one coding and a human-readable text."""
    return {"coding": [{"system": system, "code": code, "display": display}], "text": text or display}


def _ref(resource: Resource) -> dict[str, str]:
    """A relative literal reference to an already generated resource."""
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _quantity(value: float, unit: str, ucum: str) -> dict[str, Any]:
    """A UCUM Quantity."""
    return {"value": value, "unit": unit, "system": UCUM, "code": ucum}


def _round(value: float, decimals: int) -> float | int:
    """Round as a lab would report it: integers print without a decimal point."""
    return int(round(value)) if decimals == 0 else round(value, decimals)


def _phone(rng: random.Random, area: str) -> str:
    """A number in the 555-0100..0199 block reserved for fiction."""
    return f"{area}-555-01{rng.randrange(100):02d}"


def _weekday_time(rng: random.Random, day: datetime) -> datetime:
    """A clinic appointment slot on ``day`` (moved off weekends), on the quarter hour."""
    if day.weekday() >= 5:
        day += timedelta(days=7 - day.weekday())
    return day.replace(hour=rng.randint(8, 16), minute=15 * rng.randrange(4), second=0, microsecond=0)


def _any_time(rng: random.Random, day: datetime) -> datetime:
    """Any minute of ``day``, for emergencies."""
    return day.replace(hour=rng.randrange(24), minute=rng.randrange(60), second=rng.randrange(60), microsecond=0)


def _address(line: str, city: str, postal: str, district: str | None = None) -> dict[str, Any]:
    """A Massachusetts postal address."""
    address: dict[str, Any] = {"line": [line], "city": city, "state": "MA", "postalCode": postal, "country": "US"}
    if district:
        address["district"] = district
    return address


# ---------------------------------------------------------------------------------------------------------------
# The shared pool
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Staff:
    """A practitioner with the role they work in, as encounters need them."""

    practitioner: Resource
    role: Resource
    specialty: str
    site: str


@dataclass(slots=True)
class _Pool:
    """Resources shared by every patient, in dependency order, and indexes into them."""

    resources: list[Resource]
    organizations: dict[str, Resource]
    locations: dict[str, Resource]
    staff: dict[str, list[_Staff]]  # by specialty


def _pick_name(rng: random.Random, sex: str) -> tuple[str, str, _Culture]:
    """A given and family name from one culture, with the family name inflected where the culture does."""
    culture = rng.choices(CULTURES, _CULTURE_WEIGHTS)[0]
    given = rng.choice(culture.male if sex == "male" else culture.female)
    family = rng.choice(culture.family)
    if sex == "female" and culture.feminine_suffix:
        family += culture.feminine_suffix
    return given, family, culture


def _build_pool(seed: int) -> _Pool:
    """Organizations, locations, practitioners and roles; sized by the tables only, never by the patient count."""
    rng = random.Random(f"salus-demo:{seed}:pool")
    resources: list[Resource] = []
    organizations: dict[str, Resource] = {}
    locations: dict[str, Resource] = {}
    for site in SITES:
        if not site.has_org:
            continue
        org: Resource = {
            "resourceType": "Organization",
            "id": _new_id(rng),
            "identifier": [{"use": "official", "system": NPI, "value": _npi(rng)}],
            "active": True,
            "type": [_concept(ORG_TYPE, "prov", "Healthcare Provider")],
            "name": site.org_name,
            "telecom": [{"system": "phone", "value": site.phone, "use": "work"}],
            "address": [_address(site.line, site.city, site.postal)],
        }
        if site.parent:
            org["partOf"] = _ref(organizations[site.parent])
        organizations[site.key] = org
        resources.append(org)
    for site in SITES:
        if not site.has_location:
            continue
        loc: Resource = {
            "resourceType": "Location",
            "id": _new_id(rng),
            "status": "active",
            "name": site.location_name,
            "mode": "instance",
            "type": [_concept(ROLE_CODE, *site.location_type)],
            "telecom": [{"system": "phone", "value": site.phone, "use": "work"}],
            "address": _address(site.line, site.city, site.postal),
            "physicalType": _concept(PHYSICAL_TYPE, *site.physical_type),
            "position": {"latitude": site.position[0], "longitude": site.position[1]},
            "managingOrganization": _ref(organizations[_SITE_ORG.get(site.key, site.key)]),
        }
        if site.location_part_of:
            loc["partOf"] = _ref(locations[site.location_part_of])
        locations[site.key] = loc
        resources.append(loc)
    staff: dict[str, list[_Staff]] = {}
    roles: list[Resource] = []
    sites = {s.key: s for s in SITES}
    for specialty, code, display, site_key, count in STAFF:
        site = sites[site_key]
        for _ in range(count):
            sex = rng.choice(("male", "female"))
            given, family, _culture = _pick_name(rng, sex)
            suffix = rng.choices(("MD", "DO"), (0.88, 0.12))[0]
            practitioner: Resource = {
                "resourceType": "Practitioner",
                "id": _new_id(rng),
                "identifier": [{"use": "official", "system": NPI, "value": _npi(rng)}],
                "active": True,
                "name": [
                    {
                        "use": "official",
                        "family": family,
                        "given": [given],
                        "prefix": ["Dr."],
                        "suffix": [suffix],
                        "text": f"Dr. {given} {family}, {suffix}",
                    }
                ],
                "telecom": [
                    {"system": "phone", "value": site.phone, "use": "work"},
                    {
                        "system": "email",
                        "value": f"{_ascii(given)}.{_ascii(family)}@salus-health.example.org",
                        "use": "work",
                    },
                ],
                "address": [_address(site.line, site.city, site.postal) | {"use": "work"}],
                "gender": sex,
            }
            all_day = specialty in ("emergency", "hospitalist")
            role: Resource = {
                "resourceType": "PractitionerRole",
                "id": _new_id(rng),
                "active": True,
                "practitioner": _ref(practitioner),
                "organization": _ref(organizations[_SITE_ORG.get(site_key, site_key)]),
                "code": [_concept(PRACTITIONER_ROLE, "doctor", "Doctor")],
                "specialty": [_concept(SNOMED, code, display)],
                "location": [_ref(locations[site_key])],
                "telecom": [{"system": "phone", "value": site.phone, "use": "work"}],
                "availableTime": [{"daysOfWeek": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "allDay": True}]
                if all_day
                else [
                    {
                        "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
                        "availableStartTime": "08:00:00",
                        "availableEndTime": "17:00:00",
                    }
                ],
            }
            resources.append(practitioner)
            roles.append(role)
            staff.setdefault(specialty, []).append(_Staff(practitioner, role, specialty, site_key))
    # Roles last: each refers to a practitioner, an organization and a location.
    resources.extend(roles)
    return _Pool(resources, organizations, locations, staff)


# ---------------------------------------------------------------------------------------------------------------
# One patient
# ---------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Visit:
    """A planned encounter, before it is turned into resources."""

    start: datetime
    kind: str  # wellness | followup | acute
    acute: _Acute | None = None
    klass: str = "AMB"
    focus: tuple[str, ...] = ()  # chronic conditions that prompted a follow-up
    vaccines: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Shot:
    """An immunization given outside our encounters (pharmacy, mass vaccination site) and reported to us."""

    start: datetime
    vaccine: str


@dataclass(slots=True)
class _Allergy:
    """An allergy the patient has, and when it began."""

    allergen: _Allergen
    onset: date
    severity: str


class _PatientBuilder:
    """Everything about one patient: who they are, what they have, and the records that follow."""

    # Set by demographics(), diseases() and patient(), in that order.
    gender: str
    sex: str
    birth: datetime
    age: float
    given: str
    family: str
    culture: _Culture
    height_z: float
    bmi_z: float
    offsets: dict[str, float]
    window_start: datetime
    chronic: dict[str, datetime]
    allergies: list[_Allergy]
    penicillin_allergic: bool
    area: str
    family_doctor: _Staff
    pediatrician: _Staff
    subject: dict[str, str]

    def __init__(self, seed: int, index: int, pool: _Pool) -> None:
        self.rng = random.Random(f"salus-demo:{seed}:patient:{index}")
        self.index = index
        self.pool = pool
        self.out: list[Resource] = []
        self.conditions: dict[str, Resource] = {}  # chronic key -> its Condition once diagnosed
        self.meds: list[tuple[str, datetime]] = []  # long-term medications and their start
        self.prescribed: set[str] = set()

    # --- who the patient is -----------------------------------------------------------------------------------

    def demographics(self) -> None:
        """Sex, age, name, culture, body build and the person-level offsets of every signal."""
        rng = self.rng
        roll = rng.random()
        self.gender = "female" if roll < 0.505 else "male" if roll < 0.995 else rng.choice(("other", "unknown"))
        # Physiology needs a sex even when the administrative gender is other or unknown.
        self.sex = self.gender if self.gender in ("male", "female") else rng.choice(("male", "female"))
        low, high, _share = rng.choices(AGE_BANDS, [b[2] for b in AGE_BANDS])[0]
        age_days = rng.uniform(low, high) * 365.25
        self.birth = (_END - timedelta(days=age_days)).replace(hour=0, minute=0, second=0, microsecond=0)
        self.age = _years(_END - self.birth)
        self.given, self.family, self.culture = _pick_name(rng, self.sex)
        self.height_z = rng.gauss(0, 1)
        self.bmi_z = rng.gauss(0, 1)
        self.offsets = {k: rng.gauss(0, sd) for k, sd in PERSON_SD.items()}
        # Records start when the patient joined the health system (or at birth).
        joined = _END - timedelta(days=rng.uniform(1.0, 2.75) * 365.25)
        self.window_start = max(joined, self.birth)

    def diseases(self) -> None:
        """Long-term conditions and their onset, drawn from age- and risk-adjusted prevalence."""
        rng = self.rng
        self.chronic = {}
        adult_bmi = self.bmi(max(self.age, 18))
        if self.age >= 18 and adult_bmi >= 30 and rng.random() < 0.75:
            self.chronic["obesity"] = self.onset(18)
        for c in CHRONIC:
            if any(k in self.chronic for k in c.excludes):
                continue
            p = _step(c.prevalence, self.age) * (c.male if self.sex == "male" else c.female)
            for k, factor in c.risk:
                if k in self.chronic:
                    p *= factor
            if p > 0 and rng.random() < min(p, 0.9):
                first = c.prevalence[0][0]
                self.chronic[c.key] = self.onset(first)
        self.allergies = []
        for _ in range(rng.choices((0, 1, 2), (0.72, 0.21, 0.07))[0]):
            allergen = rng.choices(ALLERGENS, _ALLERGEN_WEIGHTS)[0]
            if any(a.allergen is allergen for a in self.allergies):
                continue
            onset = self.onset(0.5 if allergen.childhood else 1, latest=5 if allergen.childhood else None)
            severity = (
                "severe" if allergen.criticality == "high" and rng.random() < 0.4 else rng.choice(("mild", "moderate"))
            )
            self.allergies.append(_Allergy(allergen, onset.date(), severity))
        self.penicillin_allergic = any(a.allergen.code == "7980" for a in self.allergies)

    def onset(self, min_age: float, latest: float | None = None) -> datetime:
        """An onset between ``min_age`` and now, weighted towards recent years as most diagnoses are."""
        top = self.age if latest is None else min(self.age, latest)
        low = max(min_age, top - 25)
        if top <= low:
            return self.birth + timedelta(days=int(top * 365.25))
        age = low + (top - low) * math.sqrt(self.rng.random())
        return self.birth + timedelta(days=int(age * 365.25))

    # --- physiology ---------------------------------------------------------------------------------------------

    def age_at(self, moment: datetime) -> float:
        """Age in years at ``moment``."""
        return _years(moment - self.birth)

    def height(self, age: float) -> float:
        """Stature in cm: the age/sex median scaled by the person's percentile."""
        return _interp(HEIGHT_BY_AGE[self.sex], age) * (1 + 0.04 * self.height_z)

    def bmi(self, age: float) -> float:
        """BMI: children around the age median, adults around the population curve."""
        if age < 18:
            return _interp(BMI_BY_AGE, age) * math.exp(0.1 * self.bmi_z)
        return max(16.5, _interp(BMI_BY_AGE, age) + 5.2 * self.bmi_z)

    def signal(self, name: str, moment: datetime, acute: _Acute | None = None) -> float:
        """The true value of a physiological signal at ``moment``: baseline plus conditions, drugs and illness."""
        age = self.age_at(moment)
        female = self.sex == "female"
        if name == "hr":
            value = _interp(HR_BY_AGE, age)
        elif name == "rr":
            value = _interp(RR_BY_AGE, age)
        elif name == "temp":
            value = 36.8
        elif name == "spo2":
            value = 98.2
        elif name == "sbp":
            value = _interp(SBP_BY_AGE, age) + (0.6 * (self.bmi(age) - 26) if age >= 18 else 0)
        elif name == "dbp":
            value = _interp(DBP_BY_AGE, age) + (0.35 * (self.bmi(age) - 26) if age >= 18 else 0)
        else:
            value = LAB_MEANS[name][female]
            if name == "chol":
                value += 0.7 * (min(max(age, 20), 60) - 40)
            elif name == "creat":
                value += 0.004 * max(age - 40, 0)
        value += self.offsets[name]
        for key, onset in self.chronic.items():
            effect = CONDITION_EFFECTS.get(key)
            if effect and onset <= moment:
                value += effect.get(name, 0.0)
        for med, start in self.meds:
            effect = MEDICATION_EFFECTS.get(med)
            if effect and start < moment:
                value += effect.get(name, 0.0)
        if acute is not None:
            for key, delta in acute.effects:
                if key == name:
                    value += delta
        return value

    def measure(self, name: str, moment: datetime, acute: _Acute | None = None, fever: bool = False) -> float:
        """One measurement: the true value plus visit-to-visit noise, kept inside physiological bounds."""
        rng = self.rng
        if name == "height":
            return self.height(self.age_at(moment)) + rng.gauss(0, 0.4)
        if name == "glucose" or name == "glucose_blood":
            # Estimated average glucose from HbA1c (ADAG), a little lower as samples are mostly fasting.
            value = 28.7 * self.signal("a1c", moment) - 54.7 + rng.gauss(0, 10)
            low, high = BOUNDS["glucose"]
            return min(max(value, low), high)
        if name in ("rbc", "hct"):
            hgb = self.signal("hgb", moment)
            value = hgb / 2.95 + rng.gauss(0, 0.12) if name == "rbc" else hgb * 2.95 + rng.gauss(0, 0.8)
            return max(value, 1.0)
        if name == "ldl":
            # Friedewald relation, with assay noise.
            ldl = self.signal("chol", moment) - self.signal("hdl", moment) - self.signal("tg", moment) / 5
            low, high = BOUNDS["ldl"]
            return min(max(ldl + rng.gauss(0, 6), low), high)
        value = self.signal(name, moment, acute) + rng.gauss(0, VISIT_SD[name])
        if fever:
            if name == "temp":
                value = rng.uniform(38.0, 39.6)
            elif name == "hr":
                value += 12
            elif name == "rr":
                value += 3
        low, high = BOUNDS[name]
        return min(max(value, low), high)

    # --- the timeline ---------------------------------------------------------------------------------------------

    def plan(self) -> list[_Visit | _Shot]:
        """Every visit and outside immunization from joining the health system to the reference date, in order."""
        rng = self.rng
        visits: list[_Visit] = []
        # Well-child visits on the schedule, then (roughly) yearly check-ups.
        for months in WELL_CHILD_MONTHS:
            when = self.birth + timedelta(days=int(months * 30.44) + (3 if months == 0 else rng.randint(-7, 14)))
            if self.window_start <= when <= _LAST_VISIT:
                visit = _Visit(_weekday_time(rng, when), "wellness")
                visit.vaccines.extend(CHILD_SCHEDULE.get(months, ()))
                visits.append(visit)
        if self.age >= 18:
            year_day = rng.randrange(365)
            for year in range(max(self.window_start.year, self.birth.year + 18), _END.year):
                when = datetime(year, 1, 1) + timedelta(days=year_day + rng.randint(-30, 30))
                age = self.age_at(when)
                attend = 0.45 if age < 40 else 0.6 if age < 65 else 0.8
                if age >= 18 and self.window_start <= when <= _LAST_VISIT and rng.random() < attend:
                    visits.append(_Visit(_weekday_time(rng, when), "wellness"))
        # A new patient is seen soon after registering, so nobody is on the books without a visit.
        if self.window_start > self.birth and not any(
            v.start < self.window_start + timedelta(days=120) for v in visits
        ):
            joined = self.window_start + timedelta(days=rng.randint(7, 60))
            visits.append(_Visit(_weekday_time(rng, joined), "wellness"))
        # Chronic care: a follow-up every 6-11 months once a watched condition has started.
        watched = [c for c in CHRONIC if c.followup and c.key in self.chronic]
        if watched:
            first = max(self.window_start, min(self.chronic[c.key] for c in watched))
            when = first + timedelta(days=rng.randint(30, 200))
            while when <= _LAST_VISIT:
                focus = tuple(c.key for c in watched if self.chronic[c.key] <= when)
                if focus:
                    visits.append(_Visit(_weekday_time(rng, when), "followup", focus=focus))
                when += timedelta(days=rng.randint(180, 330))
        # Acute episodes: a Poisson process whose rate follows age.
        when = self.window_start
        while True:
            rate = _step(ACUTE_RATE, self.age_at(when))
            when += timedelta(days=rng.expovariate(rate) * 365.25)
            if when > _LAST_VISIT:
                break
            acute = self.pick_acute(when)
            if acute is None:
                continue
            klass = rng.choices([s[0] for s in acute.settings], [s[1] for s in acute.settings])[0]
            if acute.key == "pneumonia" and klass != "IMP" and self.age_at(when) >= 65 and rng.random() < 0.4:
                klass = "IMP"
            start = _weekday_time(rng, when) if klass == "AMB" else _any_time(rng, when)
            visits.append(_Visit(start, "acute", acute=acute, klass=klass))
        visits.sort(key=lambda v: v.start)
        shots = self.immunization_plan(visits)
        timeline: list[_Visit | _Shot] = [*visits, *shots]
        timeline.sort(key=lambda e: e.start)
        return timeline

    def pick_acute(self, when: datetime) -> _Acute | None:
        """Which illness strikes at ``when``, weighted by age, sex, season and history."""
        age = self.age_at(when)
        weights = []
        for a in ACUTE:
            w = a.weight if a.ages[0] <= age < a.ages[1] else 0.0
            if w and a.since is not None and when.date() < a.since:
                w = 0.0
            if w and a.seasonal and when.month not in (11, 12, 1, 2, 3):
                w *= 0.1
            if w and a.key == "pneumonia" and age >= 65:
                w *= 3
            weights.append(w * (a.female if self.sex == "female" else a.male))
        if not any(weights):
            return None
        return self.rng.choices(ACUTE, weights)[0]

    def immunization_plan(self, visits: list[_Visit]) -> list[_Shot]:
        """Seasonal, COVID-19 and adult vaccines: given at our visits when one fits, otherwise reported from outside."""
        rng = self.rng
        shots: list[_Shot] = []
        checkups = [v for v in visits if v.kind in ("wellness", "followup")]
        for season in range(self.window_start.year - 1, _END.year):
            opens = datetime(season, 9, 1)
            closes = min(datetime(season + 1, 3, 31), _LAST_VISIT)
            if closes < self.window_start or self.age_at(opens) < 0.5:
                continue
            age = self.age_at(opens)
            p = 0.55 if age < 18 else 0.35 if age < 50 else 0.5 if age < 65 else 0.7
            if rng.random() >= p:
                continue
            vaccine = "flu_trivalent" if season >= 2024 else "flu_quadrivalent"
            at_visit = next((v for v in checkups if opens <= v.start <= closes), None)
            if at_visit is not None:
                at_visit.vaccines.append(vaccine)
            else:
                when = opens + timedelta(days=rng.randint(14, 100))
                if self.window_start <= when <= _LAST_VISIT:
                    shots.append(_Shot(_weekday_time(rng, when), vaccine))
        # COVID-19: a primary series in 2021 and fall boosters, from vaccination sites.
        if self.age_at(datetime(2021, 6, 1)) >= 16 and rng.random() < 0.75:
            first = datetime(2021, 1, 15) + timedelta(days=rng.randint(0, 160))
            doses = [first, first + timedelta(days=rng.randint(21, 35))]
            for year, p in ((2021, 0.45), (2022, 0.3), (2023, 0.22), (2024, 0.2), (2025, 0.18)):
                if rng.random() < p:
                    doses.append(datetime(year, 9, 15) + timedelta(days=rng.randint(0, 75)))
            for when in doses:
                if self.window_start <= when <= _LAST_VISIT:
                    shots.append(_Shot(_weekday_time(rng, when), "covid_mrna"))
        # Adult vaccines at check-ups: tetanus boosters, shingles from 50, pneumococcal from 65.
        zoster_doses = 0
        pneumococcal = False
        for v in visits:
            if v.kind != "wellness":
                continue
            age = self.age_at(v.start)
            if age >= 19 and rng.random() < 0.08:
                v.vaccines.append(rng.choice(("td", "tdap")))
            if age >= 50 and zoster_doses < 2 and rng.random() < (0.9 if zoster_doses else 0.15):
                v.vaccines.append("zoster")
                zoster_doses += 1
            if age >= 65 and not pneumococcal and rng.random() < 0.35:
                v.vaccines.append("ppsv23")
                pneumococcal = True
        return shots

    # --- the records ---------------------------------------------------------------------------------------------

    def build(self) -> list[Resource]:
        """Generate the patient and their records, in dependency order."""
        self.demographics()
        self.diseases()
        timeline = self.plan()
        self.patient()
        known_allergies: set[int] = set()
        for event in timeline:
            if isinstance(event, _Shot):
                self.immunization(event.vaccine, event.start, None)
                continue
            self.encounter(event, known_allergies)
        return self.out

    def gp_for(self, moment: datetime) -> _Staff:
        """The patient's primary care doctor: a pediatrician for children, a family doctor for adults."""
        return self.pediatrician if self.age_at(moment) < 18 else self.family_doctor

    def patient(self) -> None:
        """The Patient resource."""
        rng = self.rng
        city, zips, district, areas = rng.choice(CITIES)
        self.area = rng.choice(areas)
        line = f"{rng.randint(1, 999)} {rng.choice(STREETS)}"
        address = _address(line, city, rng.choice(zips), district) | {"use": "home", "type": "both"}
        if rng.random() < 0.35:
            address["line"].append(f"Apt {rng.randint(1, 6)}{rng.choice('ABCD')}")
        pool = self.pool
        self.family_doctor = rng.choice(pool.staff["family"])
        self.pediatrician = rng.choice(pool.staff["pediatrics"])
        gp = self.gp_for(_END)
        name: dict[str, Any] = {"use": "official", "family": self.family, "given": [self.given]}
        if self.culture.language is None and rng.random() < 0.4:
            name["given"].append(rng.choice(self.culture.male if self.sex == "male" else self.culture.female))
        name["text"] = " ".join([*name["given"], self.family])
        telecom: list[dict[str, Any]] = [{"system": "phone", "value": _phone(rng, self.area), "use": "home"}]
        if self.age >= 14:
            telecom.append({"system": "phone", "value": _phone(rng, self.area), "use": "mobile", "rank": 1})
            if rng.random() < 0.7:
                handle = f"{_ascii(self.given)}.{_ascii(self.family)}{rng.randrange(100)}"
                telecom.append({"system": "email", "value": f"{handle}@example.com", "use": "home"})
        languages: list[dict[str, Any]] = []
        culture = self.culture
        if culture.language is not None and rng.random() < culture.prefers_language:
            languages.append({"language": _concept(BCP47, *culture.language), "preferred": True})
            languages.append({"language": _concept(BCP47, *ENGLISH)})
        else:
            languages.append({"language": _concept(BCP47, *ENGLISH), "preferred": True})
        patient: Resource = {
            "resourceType": "Patient",
            "id": _new_id(rng),
            "identifier": [
                {
                    "use": "usual",
                    "type": _concept(IDENTIFIER_TYPE, "MR", "Medical record number"),
                    "system": MRN,
                    # The index makes the MRN unique within a data set; the prefix makes it look like one.
                    "value": f"{rng.randrange(100, 1000)}{self.index + 1:07d}",
                    "assigner": _ref(pool.organizations["system"]) | {"display": "Salus Health"},
                }
            ],
            "active": True,
            "name": [name],
            "telecom": telecom,
            "gender": self.gender,
            "birthDate": self.birth.date().isoformat(),
            "address": [address],
        }
        if self.age >= 18:
            bands = [b for b in MARITAL_BY_AGE if b[0] <= self.age][-1][1]
            status = rng.choices([b[0] for b in bands], [b[1] for b in bands])[0]
            patient["maritalStatus"] = _concept(MARITAL, status, MARITAL_DISPLAY[status])
        else:
            parent_sex = rng.choice(("male", "female"))
            parent = rng.choice(culture.male if parent_sex == "male" else culture.female)
            parent_family = self.family
            if culture.feminine_suffix:
                base = self.family.removesuffix(culture.feminine_suffix)
                parent_family = base + (culture.feminine_suffix if parent_sex == "female" else "")
            patient["contact"] = [
                {
                    "relationship": [_concept(RELATIONSHIP, "N", "Next-of-Kin", "Parent")],
                    "name": {"use": "official", "family": parent_family, "given": [parent]},
                    "telecom": [{"system": "phone", "value": _phone(rng, self.area), "use": "mobile"}],
                    "gender": parent_sex,
                }
            ]
        patient["communication"] = languages
        patient["generalPractitioner"] = [_ref(gp.practitioner)]
        patient["managingOrganization"] = _ref(pool.organizations[_SITE_ORG.get(gp.site, gp.site)])
        self.subject = {"reference": f"Patient/{patient['id']}", "display": name["text"]}
        self.out.append(patient)

    def encounter(self, visit: _Visit, known_allergies: set[int]) -> None:
        """One encounter and everything recorded during it."""
        rng = self.rng
        pool = self.pool
        age = self.age_at(visit.start)
        acute = visit.acute
        if visit.klass == "IMP":
            doctor = rng.choice(pool.staff["hospitalist"])
            site = "ward"
            end = visit.start + timedelta(days=rng.randint(2, 6), hours=rng.randint(0, 10))
            enc_type = ENCOUNTER_TYPES["inpatient"]
        elif visit.klass == "EMER":
            doctor = rng.choice(pool.staff["emergency"])
            site = "ed"
            end = visit.start + timedelta(minutes=rng.randint(90, 420))
            enc_type = ENCOUNTER_TYPES["emergency"]
        else:
            doctor = self.gp_for(visit.start)
            if visit.kind == "followup":
                specialists = [_CHRONIC_BY_KEY[k].specialist for k in visit.focus if _CHRONIC_BY_KEY[k].specialist]
                if specialists and age >= 18 and rng.random() < 0.35:
                    doctor = rng.choice(pool.staff[rng.choice(specialists)])
            site = doctor.site
            end = visit.start + timedelta(minutes=rng.choice((15, 20, 30, 30, 40, 45)))
            if visit.kind == "wellness":
                enc_type = ENCOUNTER_TYPES["wellness_child" if age < 18 else "wellness_adult"]
            elif visit.kind == "followup":
                enc_type = ENCOUNTER_TYPES["followup"]
            else:
                enc_type = ENCOUNTER_TYPES["acute"]
        org = pool.organizations[_SITE_ORG.get(site, site)]
        period = {"start": _ts(visit.start), "end": _ts(end)}
        encounter: Resource = {
            "resourceType": "Encounter",
            "id": _new_id(rng),
            "status": "finished",
            "class": _coding(ACT_CODE, visit.klass, ENCOUNTER_CLASS[visit.klass]),
            "type": [_concept(SNOMED, *enc_type)],
            "subject": self.subject,
            "participant": [
                {
                    "type": [_concept(PARTICIPATION, "PPRF", "primary performer")],
                    "period": period,
                    "individual": _ref(doctor.practitioner) | {"display": doctor.practitioner["name"][0]["text"]},
                }
            ],
            "period": period,
        }
        if acute is not None:
            encounter["reasonCode"] = [_concept(SNOMED, acute.code, acute.display)]
        elif visit.kind == "followup":
            encounter["reasonCode"] = [
                _concept(SNOMED, _CHRONIC_BY_KEY[k].code, _CHRONIC_BY_KEY[k].display) for k in visit.focus
            ]
        if visit.klass == "IMP":
            encounter["hospitalization"] = {
                "admitSource": _concept(_TERM + "admit-source", "emd", "From accident/emergency department"),
                "dischargeDisposition": _concept(DISCHARGE, "home", "Home"),
            }
        encounter["location"] = [{"location": _ref(pool.locations[site]), "status": "completed", "period": period}]
        encounter["serviceProvider"] = _ref(org)
        self.out.append(encounter)
        ctx = _EncounterContext(encounter, doctor, pool.locations[site], visit.start, end)

        # The problem list is reconciled at check-ups; any visit records what was diagnosed before we met them.
        for key, onset in self.chronic.items():
            if key in self.conditions or onset > visit.start:
                continue
            if visit.kind in ("wellness", "followup") or onset < self.window_start:
                self.chronic_condition(key, onset, ctx)
        for i, allergy in enumerate(self.allergies):
            if i not in known_allergies and allergy.onset <= visit.start.date():
                known_allergies.add(i)
                self.allergy(allergy, ctx)

        fever = acute is not None and rng.random() < acute.fever
        if visit.kind == "wellness":
            names: tuple[str, ...] = ("height", "weight", "hr", "rr", "temp")
            if age >= 2:
                names += ("bmi",)
            if age >= 3:
                names += ("bp", "spo2")
        elif visit.kind == "followup":
            names = ("weight", "bp", "hr", "spo2")
        else:
            names = ("hr", "rr", "temp", "spo2") + (("bp",) if age >= 3 else ()) + (("weight",) if age < 12 else ())
        self.vitals(names, ctx, acute, fever)

        for panel in self.lab_orders(visit, age):
            self.lab_panel(panel, ctx, acute)

        reason: Resource | None = None
        if acute is not None:
            reason = self.acute_condition(acute, ctx)
            self.acute_medications(acute, reason, ctx, age)
            for key, p in acute.procedures:
                if rng.random() < p:
                    self.procedure(key, ctx, reason)
        if visit.kind == "followup":
            for key in visit.focus:
                chronic = _CHRONIC_BY_KEY[key]
                for proc, p in chronic.followup_procedures:
                    if rng.random() < p:
                        self.procedure(proc, ctx, self.conditions.get(key))
        if visit.kind == "wellness" and age >= 18:
            self.screening(ctx, age)
        if visit.kind in ("wellness", "followup") and self.meds and rng.random() < 0.35:
            self.procedure("med_reconciliation", ctx, None)
        for vaccine in visit.vaccines:
            self.immunization(vaccine, visit.start + timedelta(minutes=10), ctx)

    def lab_orders(self, visit: _Visit, age: float) -> list[str]:
        """Which panels are drawn: screening at check-ups, monitoring at follow-ups, workup when acutely ill."""
        rng = self.rng
        if age < 12:
            return []
        panels: list[str] = []
        if visit.kind == "wellness" and age >= 18:
            older = age >= 40
            if rng.random() < (0.18 if older else 0.08):
                panels.append("cmp")
            if rng.random() < (0.2 if older else 0.08):
                panels.append("cbc")
            if rng.random() < (0.3 if older or "hyperlipidemia" in self.chronic else 0.08):
                panels.append("lipid")
            if ("prediabetes" in self.chronic or "obesity" in self.chronic) and rng.random() < 0.4:
                panels.append("a1c")
        elif visit.kind == "followup":
            for key in visit.focus:
                for panel, p in _CHRONIC_BY_KEY[key].followup_labs:
                    if panel not in panels and rng.random() < p:
                        panels.append(panel)
        elif visit.acute is not None and (visit.klass != "AMB" or visit.acute.key == "pneumonia"):
            panels.extend(visit.acute.labs)
        return panels

    def chronic_condition(self, key: str, onset: datetime, ctx: _EncounterContext) -> None:
        """A problem-list Condition, and the long-term medications started for it."""
        rng = self.rng
        code, display = OBESITY if key == "obesity" else (_CHRONIC_BY_KEY[key].code, _CHRONIC_BY_KEY[key].display)
        condition: Resource = {
            "resourceType": "Condition",
            "id": _new_id(rng),
            "clinicalStatus": _concept(COND_CLINICAL, "active", "Active"),
            "verificationStatus": _concept(COND_VERIFICATION, "confirmed", "Confirmed"),
            "category": [_concept(COND_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": _concept(SNOMED, code, display),
            "subject": self.subject,
            "encounter": _ref(ctx.encounter),
            # Onsets before the first visit are the patient's recollection: a date, not a moment.
            "onsetDateTime": onset.date().isoformat() if onset < ctx.start else _ts(onset),
            "recordedDate": _ts(ctx.start),
            "recorder": _ref(ctx.doctor.practitioner),
        }
        self.conditions[key] = condition
        self.out.append(condition)
        if key == "obesity":
            return
        for med, p in _CHRONIC_BY_KEY[key].meds:
            if med not in self.prescribed and rng.random() < p:
                self.prescribed.add(med)
                # A new diagnosis is treated from the end of this visit; an old one was treated before we met them.
                started = ctx.end if onset >= self.window_start else self.window_start
                self.meds.append((med, started))
                self.medication_request(med, condition, ctx, long_term=True)

    def acute_condition(self, acute: _Acute, ctx: _EncounterContext) -> Resource:
        """An encounter-diagnosis Condition that resolves after its usual course."""
        rng = self.rng
        onset = ctx.start - timedelta(hours=rng.randint(6, 96))
        abated = onset + timedelta(days=rng.randint(*acute.days))
        condition: Resource = {
            "resourceType": "Condition",
            "id": _new_id(rng),
            "clinicalStatus": _concept(
                COND_CLINICAL, "resolved" if abated < _END else "active", "Resolved" if abated < _END else "Active"
            ),
            "verificationStatus": _concept(COND_VERIFICATION, "confirmed", "Confirmed"),
            "category": [_concept(COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
            "code": _concept(SNOMED, acute.code, acute.display),
            "subject": self.subject,
            "encounter": _ref(ctx.encounter),
            "onsetDateTime": _ts(onset),
        }
        if abated < _END:
            condition["abatementDateTime"] = _ts(abated)
        condition["recordedDate"] = _ts(ctx.start)
        condition["recorder"] = _ref(ctx.doctor.practitioner)
        self.out.append(condition)
        return condition

    def acute_medications(self, acute: _Acute, reason: Resource, ctx: _EncounterContext, age: float) -> None:
        """An antibiotic when indicated (avoiding penicillins for allergic patients) and symptom relief."""
        rng = self.rng
        if acute.antibiotic and rng.random() < acute.antibiotic_rate:
            options = [m for m in acute.antibiotic if not (self.penicillin_allergic and MEDS[m].penicillin)]
            self.medication_request(rng.choice(options or ["azithromycin"]), reason, ctx, long_term=False)
        for med, p in acute.symptomatic:
            if rng.random() < p:
                if med == "acetaminophen" and age < 12:
                    med = "acetaminophen_chewable"
                self.medication_request(med, reason, ctx, long_term=False)

    def medication_request(self, key: str, reason: Resource, ctx: _EncounterContext, long_term: bool) -> None:
        """A MedicationRequest with a structured dosage."""
        med = MEDS[key]
        days = med.course_days if not long_term and med.course_days else 0
        finished = days and ctx.start + timedelta(days=days) < _END
        repeat: dict[str, Any] = {"frequency": med.frequency, "period": 1, "periodUnit": "d"}
        if days:
            repeat["boundsDuration"] = {"value": days, "unit": "days", "system": UCUM, "code": "d"}
        dosage: dict[str, Any] = {
            "sequence": 1,
            "text": med.sig,
            "timing": {"repeat": repeat},
            "asNeededBoolean": med.as_needed,
            "doseAndRate": [{"doseQuantity": _quantity(med.dose, DOSE_UNITS[med.dose_unit], med.dose_unit)}],
        }
        request: Resource = {
            "resourceType": "MedicationRequest",
            "id": _new_id(self.rng),
            "status": "completed" if finished else "active",
            "intent": "order",
            "category": [
                _concept(
                    _TERM + "medicationrequest-category",
                    "community" if ctx.encounter["class"]["code"] == "AMB" else "discharge",
                    "Community" if ctx.encounter["class"]["code"] == "AMB" else "Discharge",
                )
            ],
            "medicationCodeableConcept": _concept(RXNORM, med.code, med.display),
            "subject": self.subject,
            "encounter": _ref(ctx.encounter),
            "authoredOn": _ts(ctx.end - timedelta(minutes=5)),
            "requester": _ref(ctx.doctor.practitioner),
            "reasonReference": [_ref(reason)],
            "dosageInstruction": [dosage],
        }
        if long_term:
            request["dispenseRequest"] = {
                "numberOfRepeatsAllowed": 3,
                "expectedSupplyDuration": {"value": 90, "unit": "days", "system": UCUM, "code": "d"},
            }
        self.out.append(request)

    def allergy(self, allergy: _Allergy, ctx: _EncounterContext) -> None:
        """An AllergyIntolerance, recorded at the first visit after it began."""
        rng = self.rng
        a = allergy.allergen
        manifestations = rng.sample(a.reactions, k=rng.randint(1, min(2, len(a.reactions))))
        resource: Resource = {
            "resourceType": "AllergyIntolerance",
            "id": _new_id(rng),
            "clinicalStatus": _concept(ALLERGY_CLINICAL, "active", "Active"),
            "verificationStatus": _concept(ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
            "type": "allergy",
            "category": [a.category],
            "criticality": a.criticality,
            "code": _concept(a.system, a.code, a.display),
            "patient": self.subject,
            "encounter": _ref(ctx.encounter),
            "onsetDateTime": allergy.onset.isoformat(),
            "recordedDate": _ts(ctx.start),
            "recorder": _ref(ctx.doctor.practitioner),
            "reaction": [
                {
                    "manifestation": [_concept(SNOMED, code, display) for code, display in manifestations],
                    "severity": allergy.severity,
                }
            ],
        }
        self.out.append(resource)

    def vitals(self, names: tuple[str, ...], ctx: _EncounterContext, acute: _Acute | None, fever: bool) -> None:
        """Vital-sign Observations taken at the start of a visit."""
        rng = self.rng
        when = ctx.start + timedelta(minutes=rng.randint(2, 8))
        stamp = _ts(when)
        age = self.age_at(when)
        height = self.measure("height", when)
        weight = self.bmi(age) * (height / 100) ** 2 * math.exp(rng.gauss(0, 0.015))
        for name in names:
            if name == "bp":
                sbp = self.measure("sbp", when, acute)
                dbp = min(self.measure("dbp", when, acute), sbp - 15)
                obs = self.observation("vital-signs", "Vital Signs", BP_PANEL[0], BP_PANEL[1], stamp, ctx)
                obs["component"] = [
                    self.component(VITALS["sbp"], sbp),
                    self.component(VITALS["dbp"], dbp),
                ]
                self.out.append(obs)
                continue
            m = VITALS[name]
            if name == "height":
                value = height
            elif name == "weight":
                value = weight
            elif name == "bmi":
                value = weight / (height / 100) ** 2
            else:
                value = self.measure(name, when, acute, fever)
            obs = self.observation("vital-signs", "Vital Signs", m.code, m.display, stamp, ctx, m.extra_codes)
            obs["valueQuantity"] = _quantity(_round(value, m.decimals), m.unit, m.ucum)
            self.out.append(obs)

    def component(self, m: _Measure, value: float) -> dict[str, Any]:
        """A blood-pressure component."""
        return {
            "code": _concept(LOINC, m.code, m.display),
            "valueQuantity": _quantity(_round(value, 0), m.unit, m.ucum),
        }

    def observation(
        self,
        category: str,
        category_display: str,
        code: str,
        display: str,
        stamp: str,
        ctx: _EncounterContext,
        extra_codes: tuple[tuple[str, str], ...] = (),
    ) -> Resource:
        """The common part of every Observation."""
        concept = _concept(LOINC, code, display)
        for extra_code, extra_display in extra_codes:
            concept["coding"].append(_coding(LOINC, extra_code, extra_display))
        return {
            "resourceType": "Observation",
            "id": _new_id(self.rng),
            "status": "final",
            "category": [_concept(OBS_CATEGORY, category, category_display)],
            "code": concept,
            "subject": self.subject,
            "encounter": _ref(ctx.encounter),
            "effectiveDateTime": stamp,
        }

    def lab_panel(self, panel: str, ctx: _EncounterContext, acute: _Acute | None) -> None:
        """Laboratory Observations for one panel, then the DiagnosticReport that groups them."""
        rng = self.rng
        code, display, members = PANELS[panel]
        drawn = ctx.start + timedelta(minutes=rng.randint(10, 30))
        resulted = drawn + timedelta(minutes=rng.randint(45, 360))
        stamp, issued = _ts(drawn), _ts(resulted)
        female = self.sex == "female"
        results: list[Resource] = []
        for member in members:
            m = LABS[member]
            value = _round(self.measure(member, drawn, acute), m.decimals)
            obs = self.observation("laboratory", "Laboratory", m.code, m.display, stamp, ctx)
            obs["issued"] = issued
            obs["valueQuantity"] = _quantity(value, m.unit, m.ucum)
            low, high = m.low[female], m.high[female]
            flag = None
            if low is not None and value < low:
                flag = ("L", "Low")
            elif high is not None and value > high:
                flag = ("H", "High")
            elif rng.random() < 0.5:
                flag = ("N", "Normal")
            if flag is not None:
                obs["interpretation"] = [_concept(INTERPRETATION, *flag)]
            reference_range: dict[str, Any] = {}
            if low is not None:
                reference_range["low"] = _quantity(low, m.unit, m.ucum)
            if high is not None:
                reference_range["high"] = _quantity(high, m.unit, m.ucum)
            obs["referenceRange"] = [reference_range]
            self.out.append(obs)
            results.append(obs)
        lab = self.pool.organizations["lab"]
        self.out.append(
            {
                "resourceType": "DiagnosticReport",
                "id": _new_id(rng),
                "status": "final",
                "category": [_concept(DIAG_SERVICE, "LAB", "Laboratory")],
                "code": _concept(LOINC, code, display),
                "subject": self.subject,
                "encounter": _ref(ctx.encounter),
                "effectiveDateTime": stamp,
                "issued": issued,
                "performer": [_ref(lab) | {"display": lab["name"]}],
                "result": [_ref(r) for r in results],
            }
        )

    def procedure(self, key: str, ctx: _EncounterContext, reason: Resource | None) -> None:
        """A completed Procedure during the encounter."""
        rng = self.rng
        code, display = PROCEDURES[key]
        # Inside the encounter: surgery some hours into a stay, anything else in the first half of the visit.
        visit_minutes = int((ctx.end - ctx.start).total_seconds() // 60)
        if key == "appendectomy":
            start = ctx.start + timedelta(hours=rng.randint(3, 12))
        else:
            start = ctx.start + timedelta(minutes=rng.randint(2, max(3, min(visit_minutes // 2, 60))))
        end = min(
            start + timedelta(minutes=rng.randint(10, 90 if key in ("appendectomy", "colonoscopy") else 25)), ctx.end
        )
        resource: Resource = {
            "resourceType": "Procedure",
            "id": _new_id(rng),
            "status": "completed",
            "code": _concept(SNOMED, code, display),
            "subject": self.subject,
            "encounter": _ref(ctx.encounter),
            "performedPeriod": {"start": _ts(start), "end": _ts(end)},
            "performer": [{"actor": _ref(ctx.doctor.practitioner)}],
            "location": _ref(ctx.location),
        }
        if reason is not None:
            resource["reasonReference"] = [_ref(reason)]
        self.out.append(resource)

    def screening(self, ctx: _EncounterContext, age: float) -> None:
        """Age-appropriate screening done or ordered at an adult check-up."""
        rng = self.rng
        if rng.random() < 0.3:
            self.procedure("depression_screening", ctx, None)
        if self.sex == "female" and 40 <= age < 75 and rng.random() < 0.45:
            self.procedure("mammography", ctx, None)
        if 45 <= age < 76 and rng.random() < 0.07:
            self.procedure("colonoscopy", ctx, None)

    def immunization(self, key: str, when: datetime, ctx: _EncounterContext | None) -> None:
        """An Immunization: ours when given at an encounter, otherwise a reported record from elsewhere."""
        rng = self.rng
        cvx, display, route, route_display = VACCINES[key]
        resource: Resource = {
            "resourceType": "Immunization",
            "id": _new_id(rng),
            "status": "completed",
            "vaccineCode": _concept(CVX, cvx, display),
            "patient": self.subject,
        }
        if ctx is not None:
            resource["encounter"] = _ref(ctx.encounter)
        resource["occurrenceDateTime"] = _ts(when)
        resource["primarySource"] = ctx is not None
        if ctx is None:
            resource["reportOrigin"] = _concept(IMMUNIZATION_ORIGIN, "record", "Written Record")
        else:
            resource["location"] = _ref(ctx.location)
        resource["lotNumber"] = f"{rng.choice(('EL', 'FK', 'GH', 'U', 'AB'))}{rng.randrange(1000, 99999)}"
        resource["route"] = _concept(ROUTE, route, route_display)
        if ctx is not None:
            resource["performer"] = [
                {
                    "function": _concept(_TERM + "v2-0443", "AP", "Administering Provider"),
                    "actor": _ref(ctx.doctor.practitioner),
                }
            ]
        self.out.append(resource)


@dataclass(frozen=True, slots=True)
class _EncounterContext:
    """What every resource recorded during an encounter refers to."""

    encounter: Resource
    doctor: _Staff
    location: Resource
    start: datetime
    end: datetime


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def generate(patients: int, seed: int = 1) -> Iterator[Resource]:
    """Yield the shared pool, then each patient followed by their records; every reference points backwards."""
    if patients < 0:
        raise ValueError("patients must be >= 0")
    pool = _build_pool(seed)
    yield from pool.resources
    for index in range(patients):
        yield from _PatientBuilder(seed, index, pool).build()


def estimate(patients: int) -> int:
    """Approximate number of resources ``generate(patients)`` yields, for a progress bar."""
    return POOL_SIZE + patients * _RESOURCES_PER_PATIENT


def count_by_type(resources: Iterable[Resource]) -> dict[str, int]:
    """How many resources of each type, e.g. to print a summary after loading."""
    return dict(Counter(r["resourceType"] for r in resources))
