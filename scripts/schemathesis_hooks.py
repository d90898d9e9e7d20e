"""Schemathesis hooks of scripts/schemathesis.py (loaded through its config's `hooks`).

One check of our own, `valid_input_not_refused_as_invalid`: a request generated from the
schema (positive data) must not be refused as malformed or invalid (400 `malformed-json` /
`invalid-query`, 422 `invalid-request`). That is what says the schema is as strict as the
server. The built-in `positive_data_acceptance` is told to let 422 through (see the config that
scripts/schemathesis.py writes), because a schema-valid request can still break a rule that
depends on the franchise's state, which no schema can express: a reward not in the current
catalogue (`unknown-reward`), a currency other than the program's (`currency-mismatch`), a refund
of an anonymous sale (`anonymous-refund`), a balance that would pass 10^18 (`limit-exceeded`), a
code asked of a program offering none (`redemption-codes-not-offered`), an expired code
(`code-expired`).
Those codes, and the few rules listed in NOT_IN_A_SCHEMA below, are all that a 400 or 422 to
positive data may say.

And one hook, `before_call`: the runs must not rotate or revoke the keys they authenticate with
(scripts/schemathesis.py passes their ids in LOYALTY_SCHEMATHESIS_PROTECTED_KEYS); such a call,
however its key id was found, is sent for a key that does not exist instead (404). Nor may they
erase the members they rely on (README "Privacy"; LOYALTY_SCHEMATHESIS_PROTECTED_MEMBERS): an
erasure of one of them is sent for the member seeded to be erased instead
(LOYALTY_SCHEMATHESIS_ERASABLE_MEMBER), so the erasure is still exercised.
"""

from __future__ import annotations

import json
import os
import re

import schemathesis
from schemathesis.core.failures import Failure

# 422 codes that depend on state the schema cannot know (README "Errors").
# A redemption asking for a code of a program offering none, and a code past its expiry
# (README "Redemption codes"), depend on the program and the member.
STATE_DEPENDENT_422 = {
    "unknown-reward",
    "currency-mismatch",
    "anonymous-refund",
    "limit-exceeded",
    "redemption-codes-not-offered",
    "code-expired",
}

# Rules that no JSON Schema can state, each where it applies: (operations, status, code, the
# detail's words). Across fields of one object (distinct ids and names, sorted thresholds, the
# stamp card's, an automatic voucher's and the birthday's reward in the catalogue, a schedule's
# dates and times in order, a purchase's line items adding up to at most its amount, a segment
# filter's tiers in the program, its minimum not above its maximum; a campaign's id distinct, its
# segment, tier and reward the program's, its dates in order), across query parameters (`from`
# not after `to`, at most 1096 days, 366 for segments), or data (the IANA time zone database).
# Everything else a schema can say, so a 400 or 422 to positive data for anything else means that
# the document is laxer than the server. (A campaign template's placeholders are in its schema's
# pattern, so they are not listed here.)
PROGRAM_OPS = ("POST /v1/franchises", "PUT /v1/franchises/{fid}/program")
DASHBOARD_OPS = (
    "GET /v1/franchises/{fid}/dashboard",
    "GET /v1/franchises/{fid}/dashboard.csv",
    "GET /v1/franchises/{fid}/segments",
    "GET /v1/franchises/{fid}/campaigns",
)
NOT_IN_A_SCHEMA = [
    (
        PROGRAM_OPS,
        422,
        "invalid-request",
        re.compile(
            r"^program: invalid program: (reward id .* appears twice|tier name .* appears twice"
            r"|tiers must be sorted by strictly increasing threshold"
            r"|stamp_card\.reward_id .* is not a reward of the catalogue"
            r"|time_zone .* is not an IANA time zone name"
            r"|bonus multiplier name .* appears twice"
            r"|bonus_multipliers\[\d+\]\.from_date \(.*\) is after bonus_multipliers\[\d+\]\.to_date"
            r"|bonus_multipliers\[\d+\]\.from_time must be before bonus_multipliers\[\d+\]\.to_time"
            r"|item bonus name .* appears twice"
            r"|rewards\[\d+\]\.valid_from \(.*\) is after rewards\[\d+\]\.valid_to"
            r"|auto_vouchers\[\d+\]\.reward_id .* is not a reward of the catalogue"
            r"|auto_vouchers\[\d+\]\.at_points \d+ appears twice"
            r"|birthday_reward\.reward_id .* is not a reward of the catalogue"
            r"|segments\.lapsed_days \(\d+\) must be above segments\.at_risk_days"
            r"|segments\.custom\[\d+\]\.name .* is a built-in segment"
            r"|segment name .* appears twice"
            r"|segments\.custom\[\d+\] sets no condition"
            r"|segments\.custom\[\d+\]\.tiers (names no tier of the program|must list 1 to \d+ tier names)"
            r"|segments\.custom\[\d+\]\.(visits|spend_cents): min_\w+ \(\d+\) is above max_\w+"
            r"|campaigns\[\d+\]\.id .* appears twice"
            r"|campaigns\[\d+\]\.valid_from \(.*\) is after campaigns\[\d+\]\.valid_to"
            r"|campaigns\[\d+\]\.(trigger\.segment|audience\.segments) .* is not a segment of the program"
            r"|campaigns\[\d+\]\.(trigger\.segment|audience\.segments) names segment .* but the program has no segments section"
            r"|campaigns\[\d+\]\.trigger\.tier .* (is not a tier of the program|is the first tier)"
            r"|campaigns\[\d+\]\.offer\.reward_id .* is not a reward of the catalogue)"
        ),
    ),
    # A purchase's line items add up to at most its amount (README "Item bonuses").
    (
        ("POST /v1/purchases",),
        422,
        "invalid-request",
        re.compile(r"^invalid items: the items' amounts add up to \d+ cents, more than the purchase's amount_cents"),
    ),
    (DASHBOARD_OPS, 400, "invalid-query", re.compile(r"^(from \(.*\) is after to|the range is \d+ days)")),
]


class ValidInputRefused(Failure):
    code = "ST990"
    checks = ("valid_input_not_refused_as_invalid",)
    kind_title = "Schema-valid request refused as invalid"


@schemathesis.check
def valid_input_not_refused_as_invalid(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    try:
        problem = json.loads(response.content or b"{}")
    except ValueError:
        problem = {}
    code = problem.get("code") if isinstance(problem, dict) else None
    if response.status_code == 422 and code in STATE_DEPENDENT_422:
        return None
    if response.status_code == 400 and code == "ambiguous-authorization":
        return None
    detail = problem.get("detail", "") if isinstance(problem, dict) else ""
    for operations, status, expected_code, words in NOT_IN_A_SCHEMA:
        if (
            case.operation.label in operations
            and response.status_code == status
            and code == expected_code
            and words.search(str(detail))
        ):
            return None
    raise ValidInputRefused(
        operation=case.operation.label,
        message=(
            f"A request valid by the schema was answered {response.status_code} `{code}`: "
            f"{problem.get('detail') if isinstance(problem, dict) else response.text!r}\n"
            "The schema must refuse what the server refuses (or the server accept it)."
        ),
    )


# Changes of a key named in the path, and a key id no franchise has.
KEY_CHANGES = (
    "POST /v1/franchises/{fid}/api-keys/{kid}/rotate",
    "POST /v1/franchises/{fid}/api-keys/{kid}/revoke",
)
PROTECTED_KEYS = set(filter(None, os.environ.get("LOYALTY_SCHEMATHESIS_PROTECTED_KEYS", "").split(",")))
UNKNOWN_KEY = "k_00000000000000000000"
ERASURE = "POST /v1/members/{member_id}/erasure"
PROTECTED_MEMBERS = set(filter(None, os.environ.get("LOYALTY_SCHEMATHESIS_PROTECTED_MEMBERS", "").split(",")))
# No erasable member given: a member id no franchise has (404).
ERASABLE_MEMBER = os.environ.get("LOYALTY_SCHEMATHESIS_ERASABLE_MEMBER") or "m0000000000000000000000000"


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if case.operation.label in KEY_CHANGES and params and params.get("kid") in PROTECTED_KEYS:
        params["kid"] = UNKNOWN_KEY
    if case.operation.label == ERASURE and params and params.get("member_id") in PROTECTED_MEMBERS:
        params["member_id"] = ERASABLE_MEMBER
