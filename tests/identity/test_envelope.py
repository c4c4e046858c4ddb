"""The signed envelope (hedgerow.core.envelope), table-driven: its wire form, what is
signed, the counter rules, and every way an envelope can be malformed."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hedgerow.core import component, documents, envelope, limits

KEY = ed25519.Ed25519PrivateKey.generate()
RAW = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
KEY_ID = envelope.key_id_of(RAW)


def doc(thing: str = "dev-a", version: str = "1.0.0") -> bytes:
    comp = documents.ResolvedComponent(
        name="com.example.Hello", version=version,
        lifecycle=component.Lifecycle(run=component.Step(script="sleep 60")))
    return documents.render_bytes(documents.render_desired_state(thing, [], [comp]))


def seal(data: bytes, thing: str = "dev-a", counter: int = 5) -> bytes:
    signature = KEY.sign(envelope.render_signing_input(thing, counter, KEY_ID, data))
    return envelope.render_envelope(thing, counter, KEY_ID, data, signature)


def verifies(sealed: envelope.SignedDesiredState) -> bool:
    try:
        KEY.public_key().verify(sealed.signature_bytes(), sealed.signing_input())
    except InvalidSignature:
        return False
    return True


def test_round_trip_carries_the_exact_bytes() -> None:
    data = doc()
    wire = seal(data)
    parsed = envelope.parse_envelope(wire)
    assert parsed.document_bytes() == data
    assert (parsed.thing, parsed.counter, parsed.key_id) == ("dev-a", 5, KEY_ID)
    assert verifies(parsed)
    assert wire == seal(data)  # deterministic: Ed25519 and canonical JSON
    assert set(json.loads(wire)) == {"apiVersion", "kind", "thing", "counter", "keyId",
                                     "algorithm", "document", "signature"}


def _edit(field: str, value: object) -> bytes:
    raw = json.loads(seal(doc()))
    raw[field] = value
    return json.dumps(raw).encode()


# (what an attacker changes, the payload) -> the signature no longer verifies
TAMPERED = {
    "counter raised (replay under a new counter)": _edit("counter", 6),
    "thing changed (another device's document)": _edit("thing", "dev-b"),
    "document swapped": _edit("document", base64.b64encode(doc("dev-a", "6.6.6")).decode()),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_any_change_breaks_the_signature(case: str) -> None:
    assert not verifies(envelope.parse_envelope(TAMPERED[case]))


MALFORMED = {
    "unsigned plain DesiredState": (doc(), "not signed"),
    "not JSON": (b"{nope", "not signed"),
    "empty object": (b"{}", "not signed"),
    "signature not base64": (_edit("signature", "!" * 88), "signature"),
    "signature too short": (_edit("signature", base64.b64encode(b"x" * 63).decode()),
                            "signature"),
    "document not base64": (_edit("document", "%%%"), "document"),
    "counter zero": (_edit("counter", 0), "counter"),
    "counter negative": (_edit("counter", -1), "counter"),
    "counter a string": (_edit("counter", "7"), "counter"),
    "bad key id": (_edit("keyId", "ABC"), "keyId"),
    "other algorithm": (_edit("algorithm", "none"), "algorithm"),
    "bad thing": (_edit("thing", "../etc"), "thing"),
    "too large": (b" " * (envelope.MAX_ENVELOPE_BYTES + 1), "at most"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_envelopes_are_refused_with_the_reason(case: str) -> None:
    payload, reason = MALFORMED[case]
    with pytest.raises(envelope.EnvelopeError, match=reason):
        envelope.parse_envelope(payload)


SIGNING_INPUTS = [  # any field differs -> different signed bytes
    ("dev-b", 5, KEY_ID, doc()),
    ("dev-a", 6, KEY_ID, doc()),
    ("dev-a", 5, "0" * 16, doc()),
    ("dev-a", 5, KEY_ID, doc(version="2.0.0")),
]


def test_signing_input_binds_every_field() -> None:
    base_input = envelope.render_signing_input("dev-a", 5, KEY_ID, doc())
    assert base_input.startswith(b"hedgerow.dev/signed-desired-state/v1\0")
    others = {envelope.render_signing_input(*args) for args in SIGNING_INPUTS}
    assert base_input not in others and len(others) == len(SIGNING_INPUTS)


@pytest.mark.parametrize(("last", "now_ms", "expected"), [
    (0, 1_700_000_000_000, 1_700_000_000_000),  # first publish: the clock
    (1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_001),  # same ms: +1
    (1_700_000_000_500, 1_700_000_000_000, 1_700_000_000_501),  # clock behind: +1
    (5, 1_700_000_000_000, 1_700_000_000_000),  # a restart: the clock moved on
])
def test_counter_is_a_hybrid_logical_clock(last: int, now_ms: int, expected: int) -> None:
    assert envelope.resolve_counter(last, now_ms) == expected
    assert envelope.is_newer(envelope.resolve_counter(last, now_ms), last)


V = envelope.Verdict


@pytest.mark.parametrize(("counter", "digest", "seen", "seen_digest", "verdict"), [
    (1, "a", 0, None, V.NEWER),  # a fresh device
    (10, "b", 9, "a", V.NEWER),
    (10, "b", 9, "b", V.NEWER),  # a rollback: old content, new counter
    (9, "a", 9, "a", V.SAME),  # the retained copy again, on reconnect
    (9, "b", 9, "a", V.REPLAYED),  # same counter, other content
    (8, "a", 9, "a", V.REPLAYED),  # an older, genuinely signed document
    (8, "b", 9, "a", V.REPLAYED),
])
def test_verdicts(counter: int, digest: str, seen: int, seen_digest: str | None,
                  verdict: envelope.Verdict) -> None:
    assert envelope.resolve_verdict(counter, digest, seen, seen_digest) is verdict


def test_the_largest_document_fits_the_broker_packet() -> None:
    data = b"x" * envelope.MAX_DOCUMENT_BYTES
    wire = envelope.render_envelope("a" * 64, 2**62, KEY_ID, data, b"s" * 64)
    assert len(wire) <= envelope.MAX_ENVELOPE_BYTES < limits.BROKER_MAX_PACKET_BYTES
    assert envelope.parse_envelope(wire).document_bytes() == data
