"""docs/openapi.yaml describes exactly what each role serves: every /api/ route Django
resolves (and /health) is in it with the methods its view accepts, and every path in it
resolves in its role. Each role is probed in a process of its own (P2P_ROLE is read once,
when the settings load)."""

import pytest
import schemathesis

from tests.helpers.openapi import SPEC_PATH, load_spec, served_operations, spec_operations

ROLES = ["loginserver", "node"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """served(role): what that role's Django serves, probed once per role."""
    probed = {}

    def probe(role: str) -> dict:
        if role not in probed:
            probed[role] = served_operations(role, tmp_path_factory.mktemp(role))
        return probed[role]

    return probe


def test_the_description_is_a_valid_openapi_document():
    schemathesis.openapi.from_path(SPEC_PATH).validate()


@pytest.mark.parametrize("role", ROLES)
def test_the_description_lists_every_route_of_the_role_with_its_methods(role, served):
    assert spec_operations(load_spec(), role) == served(role)["routes"]


@pytest.mark.parametrize("role", ROLES)
def test_every_path_the_description_gives_the_role_resolves_there(role, served):
    resolves = served(role)["resolves"]

    assert resolves, "the description gives this role no operation"
    assert [path for path, found in resolves.items() if not found] == []


def test_the_login_servers_fast_path_serves_only_described_operations(served):
    described = spec_operations(load_spec(), "loginserver")
    fast_path = served("loginserver")["fast_path"]

    assert fast_path
    assert [(m, p) for m, p in fast_path if m not in described.get(p, [])] == []
