"""UCUM canonical units for quantity search (R4 search.html#quantity: "the server may ... canonical units").

Each stored quantity in a unit listed here also gets a row in the canonical unit of
its dimension, under the marker system ``CANONICAL_SYSTEM``; a search in a UCUM unit
is converted the same way and matched against those rows, so ``5.4|http://unitsofmeasure.org|mg``
finds ``0.0054 g``. Only conversions by a factor (and, for temperature, an offset)
are listed: mg/dL to mmol/L needs a molar mass and is not converted.
"""

from __future__ import annotations

import math
from decimal import Decimal

UCUM = "http://unitsofmeasure.org"
# rows in canonical units carry this system, so that a search without units never compares
# against a converted value (5.4 mg is not "lt1" just because it is 0.0054 g)
CANONICAL_SYSTEM = "urn:salus:ucum-canonical"

_D = Decimal
# unit -> (canonical unit, factor, offset): canonical = value * factor + offset
UNITS: dict[str, tuple[str, Decimal, Decimal]] = {
    **{u: ("g", _D(f), _D(0)) for u, f in {
        "kg": "1000", "g": "1", "mg": "0.001", "ug": "0.000001", "ng": "1e-9", "pg": "1e-12",
        "[lb_av]": "453.59237", "[oz_av]": "28.349523125"}.items()},
    **{u: ("m", _D(f), _D(0)) for u, f in {
        "km": "1000", "m": "1", "cm": "0.01", "mm": "0.001", "um": "0.000001",
        "[in_i]": "0.0254", "[ft_i]": "0.3048"}.items()},
    **{u: ("L", _D(f), _D(0)) for u, f in {"L": "1", "dL": "0.1", "mL": "0.001", "uL": "0.000001"}.items()},
    **{u: ("g/L", _D(f), _D(0)) for u, f in {
        "g/L": "1", "g/dL": "10", "mg/dL": "0.01", "mg/L": "0.001", "mg/mL": "1", "ug/mL": "0.001",
        "ug/L": "0.000001", "ug/dL": "0.00001", "ng/mL": "0.000001", "ng/dL": "1e-8", "pg/mL": "1e-9"}.items()},
    **{u: ("mol/L", _D(f), _D(0)) for u, f in {
        "mol/L": "1", "mmol/L": "0.001", "umol/L": "0.000001", "nmol/L": "1e-9", "pmol/L": "1e-12"}.items()},
    **{u: ("s", _D(f), _D(0)) for u, f in {
        "ms": "0.001", "s": "1", "min": "60", "h": "3600", "d": "86400", "wk": "604800"}.items()},
    "/s": ("/s", _D(1), _D(0)),
    "/min": ("/s", _D(1) / _D(60), _D(0)),
    "/h": ("/s", _D(1) / _D(3600), _D(0)),
    **{u: ("Pa", _D(f), _D(0)) for u, f in {"Pa": "1", "kPa": "1000", "mm[Hg]": "133.322387415", "bar": "100000"}.items()},
    **{u: ("/L", _D(f), _D(0)) for u, f in {
        "/L": "1", "/mL": "1000", "/uL": "1000000", "10*3/uL": "1e9", "10*6/uL": "1e12", "10*9/L": "1e9",
        "10*12/L": "1e12", "10*3/mL": "1e6"}.items()},
    "K": ("K", _D(1), _D(0)),
    "Cel": ("K", _D(1), _D("273.15")),
    # K = (F + 459.67) * 5/9
    "[degF]": ("K", _D(5) / _D(9), _D("459.67") * _D(5) / _D(9)),
}


def convert(value: float, unit: str) -> float:
    """A bound in ``unit`` as a bound in the unit's canonical unit (infinite bounds stay infinite)."""
    if math.isinf(value):
        return value
    _, factor, offset = UNITS[unit]
    return float(_D(repr(value)) * factor + offset)


def convert_decimal(value: Decimal, unit: str) -> Decimal:
    """A search value in ``unit`` in canonical units (for ``ap``'s 10% span)."""
    _, factor, offset = UNITS[unit]
    return value * factor + offset


def canonical_unit(system: str | None, code: str | None) -> str | None:
    """The canonical unit a UCUM code converts to, or None when it is not UCUM or not convertible."""
    if system != UCUM or code is None or code not in UNITS:
        return None
    return UNITS[code][0]


def canonical_row(system: str | None, code: str | None, low: float, high: float) -> tuple[str, str, float, float] | None:
    """The extra ``idx_quantity`` row, in canonical units, for a stored UCUM quantity."""
    unit = canonical_unit(system, code)
    if unit is None or code is None:
        return None
    return CANONICAL_SYSTEM, unit, convert(low, code), convert(high, code)
