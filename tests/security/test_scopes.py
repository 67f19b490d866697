"""SMART App Launch 2.0.0 scopes: v2 and v1 syntax, granular scopes, and that anything malformed grants nothing."""

from __future__ import annotations

import pytest

from salus.security.scopes import Grants, Scope, parse_scope

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


# --- v2 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level", "res_type", "letters"),
    [
        ("patient/Observation.rs", "patient", "Observation", "rs"),
        ("user/*.cruds", "user", "*", "cruds"),
        ("system/Patient.r", "system", "Patient", "r"),
        ("user/Encounter.cu", "user", "Encounter", "cu"),
        ("patient/Condition.s", "patient", "Condition", "s"),
        ("system/*.d", "system", "*", "d"),
    ],
)
def test_v2_scopes(text: str, level: str, res_type: str, letters: str) -> None:
    assert parse_scope(text) == Scope(level, res_type, frozenset(letters))


def test_granular_scope_keeps_its_query_url_decoded() -> None:
    s = parse_scope(f"patient/Observation.rs?category={LAB}")
    assert s == Scope("patient", "Observation", frozenset("rs"), (("category", LAB),))
    encoded = parse_scope("patient/Observation.rs?category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem"
                          "%2Fobservation-category%7Claboratory")
    assert encoded == s


def test_granular_scope_with_two_parameters() -> None:
    s = parse_scope("user/Observation.rs?category=laboratory&status=final")
    assert s is not None
    assert s.query == (("category", "laboratory"), ("status", "final"))


# --- v1 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level", "res_type", "letters"),
    [
        ("patient/*.read", "patient", "*", "rs"),
        ("user/Observation.write", "user", "Observation", "cud"),
        ("system/*.*", "system", "*", "cruds"),
        ("user/Patient.*", "user", "Patient", "cruds"),
    ],
)
def test_v1_scopes_map_to_v2_letters(text: str, level: str, res_type: str, letters: str) -> None:
    assert parse_scope(text) == Scope(level, res_type, frozenset(letters))


# --- not resource scopes, or malformed --------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access", "online_access"]
)
def test_non_resource_scopes_say_nothing_about_data(text: str) -> None:
    assert parse_scope(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "admin/*.cruds",  # unknown level
        "Patient/*.rs",  # levels are lower case
        "patient/Observation",  # no permissions
        "patient/Observation.",  # empty permissions
        "patient/Observation.sr",  # out of order
        "patient/Observation.rr",  # repeated
        "patient/Observation.rx",  # unknown letter
        "patient/Observation.RS",  # letters are lower case
        "patient/Observation.readwrite",
        "patient/Observaton.rs",  # unknown resource type
        "patient/observation.rs",
        "patient/Resource.rs",  # abstract, not a concrete type
        "patient/Observation.read?category=laboratory",  # v1 has no granular form
        "patient/Observation.rs?",  # empty query
        "patient/Observation.rs?category",  # no value
        "patient/Observation.rs?category=",  # empty value
        "patient/Observation.rs?=laboratory",  # no name
        "patient/Observation.rs?category=laboratory&",  # trailing empty pair
        "patient.rs",
        "/Observation.rs",
    ],
)
def test_invalid_scopes_are_ignored(text: str) -> None:
    assert parse_scope(text) is None


# --- Grants -----------------------------------------------------------------------------------------


def test_grants_drop_non_resource_and_invalid_scopes() -> None:
    g = Grants.of(["openid", "fhirUser", "launch/patient", "patient/Observation.sr", "bogus", "patient/Observation.rs"])
    assert g.scopes == (Scope("patient", "Observation", frozenset("rs")),)


def test_levels_per_interaction_and_type() -> None:
    g = Grants.of(["patient/*.rs", "user/Observation.cu", "system/Patient.d"])
    assert g.levels("r", "Observation") == {"patient"}
    assert g.levels("s", "Condition") == {"patient"}
    assert g.levels("c", "Observation") == {"user"}
    assert g.levels("u", "Observation") == {"user"}
    assert g.levels("c", "Condition") == set()
    assert g.levels("d", "Patient") == {"system"}
    assert g.levels("d", "Observation") == set()


def test_levels_of_v1_and_v2_together() -> None:
    g = Grants.of(["user/Observation.read", "patient/Observation.write"])
    assert g.levels("r", "Observation") == {"user"}
    assert g.levels("s", "Observation") == {"user"}
    assert g.levels("c", "Observation") == {"patient"}
    assert g.levels("d", "Observation") == {"patient"}


def test_no_scopes_grant_nothing() -> None:
    g = Grants.of([])
    for letter in "cruds":
        assert g.levels(letter, "Patient") == set()


def test_unknown_interaction_letter_is_a_caller_error() -> None:
    g = Grants.of(["user/*.cruds"])
    for bad in ("x", "rs", "", "R"):
        with pytest.raises(ValueError):
            g.levels(bad, "Patient")


def test_filters_unrestricted_when_any_matching_scope_has_no_query() -> None:
    g = Grants.of([f"patient/Observation.rs?category={LAB}", "patient/*.rs"])
    assert g.filters("s", "Observation", "patient") is None


def test_filters_are_the_or_of_granular_queries() -> None:
    g = Grants.of([f"patient/Observation.rs?category={LAB}", f"patient/Observation.rs?category={VITALS}"])
    assert g.filters("s", "Observation", "patient") == [(("category", LAB),), (("category", VITALS),)]
    assert g.filters("r", "Observation", "patient") == [(("category", LAB),), (("category", VITALS),)]


def test_filters_are_per_level_type_and_interaction() -> None:
    g = Grants.of([f"patient/Observation.rs?category={LAB}", "user/Observation.rs"])
    assert g.filters("s", "Observation", "patient") == [(("category", LAB),)]
    assert g.filters("s", "Observation", "user") is None
    # nothing matches: an empty list, which allows nothing
    assert g.filters("c", "Observation", "patient") == []
    assert g.filters("s", "Condition", "patient") == []
    assert g.filters("s", "Observation", "system") == []


def test_filters_do_not_repeat_a_query() -> None:
    g = Grants.of(["patient/Observation.rs?category=laboratory", "patient/Observation.r?category=laboratory"])
    assert g.filters("r", "Observation", "patient") == [(("category", "laboratory"),)]
