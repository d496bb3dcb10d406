"""schemathesis hooks for tests/schemathesis/run.sh (loaded through SCHEMATHESIS_HOOKS).

The document says all JSON Schema can say. One rule of the API it cannot: the `expiresAt` of a
new API key must be a real time in the future (`02-30` matches the documented pattern, and no
schema knows what "now" is); the server answers such a request `400 invalid_expiry` or
`invalid_body`, as documented. So, and only in requests schemathesis generates as *valid*
bodies for `POST /v1/admin/projects/{id}/api-keys`, an `expiresAt` naming a past time has its
year moved 7600 years on (a multiple of 400, so leap days stay leap days), and one naming a day
that does not exist is replaced by a real future time. Everything else is left as generated;
invalid bodies are never touched, so the server's refusals are tested as they are.
"""

import datetime
import re

import schemathesis
from schemathesis.core.parameters import ParameterLocation

OPERATION = ("POST", "/v1/admin/projects/{id}/api-keys")
SHAPE = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.[0-9]+)?"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)
YEARS_ON = 7600


def _instant(m: re.Match) -> datetime.datetime | None:
    """The time `m` names, or None when it names no real time."""
    try:
        local = datetime.datetime(
            int(m["year"]), int(m["month"]), int(m["day"]), int(m["hour"]), int(m["minute"]),
            int(m["second"]), tzinfo=datetime.timezone.utc,
        )
    except ValueError:
        return None
    if m["sign"] is None:
        return local
    offset = datetime.timedelta(hours=int(m["oh"]), minutes=int(m["om"]))
    return local - offset if m["sign"] == "+" else local + offset


def _in_future(value: str) -> str:
    m = SHAPE.fullmatch(value)
    if m is None:
        return value  # not the documented shape: the server's answer is the test
    now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
    instant = _instant(m)
    if instant is None:
        return "2999-01-01T00:00:00Z"
    if instant > now:
        return value
    return f"{int(m['year']) + YEARS_ON:04d}{value[4:]}"


@schemathesis.hook
def map_case(context, case):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != OPERATION:
        return case
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return case
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("expiresAt"), str):
        body["expiresAt"] = _in_future(body["expiresAt"])
    return case
