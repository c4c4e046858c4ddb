"""The signed envelope around a desired document (pure: no keys, no crypto library).

The controller signs every DesiredState it publishes; the device verifies it with the
public key pinned in its bootstrap bundle before writing a byte. The envelope carries the
document as the exact bytes that were signed (base64), so neither side has to
re-serialise JSON to check a signature:

    {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "SignedDesiredState",
     "thing": "pump-7", "counter": 1764800000123, "keyId": "9f2c…",
     "algorithm": "Ed25519", "document": "<base64 of the DesiredState bytes>",
     "signature": "<base64 of 64 bytes>"}

What is signed (:func:`render_signing_input`) is a domain-separated, canonical statement
of thing, counter, key id and the SHA-256 of the document bytes: a signature made for one
thing, counter or purpose never verifies for another.

Counter rules (:func:`resolve_counter` on the controller, :func:`is_newer` /
:func:`resolve_verdict` on the device): the counter is a hybrid logical clock,
``max(last issued + 1, unix milliseconds)``. It grows with every publish of a thing,
including a rollback (old content, new counter), and keeps growing across controller
restarts without any stored state, because a restart takes more than a millisecond; only
a wall clock stepped back past the last issued counter would make it repeat, and then the
device refuses (fail-safe: it keeps its last good state) until the clock catches up.
The device accepts only a counter above the highest it has seen; the same counter with
the same document is the retained copy delivered again on reconnect (nothing to do).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated, Final, Literal

import pydantic

from hedgerow.core import base, documents, limits

KIND: Final = "SignedDesiredState"
ALGORITHM: Final = "Ed25519"
_DOMAIN: Final = b"hedgerow.dev/signed-desired-state/v1\0"
# The largest document the envelope may carry, and so the largest envelope: base64 (4/3)
# plus the fixed fields stay far below the broker's packet limit.
MAX_DOCUMENT_BYTES: Final = limits.MAX_DESIRED_BYTES
MAX_ENVELOPE_BYTES: Final = MAX_DOCUMENT_BYTES * 4 // 3 + 4 * limits.KIB
assert MAX_ENVELOPE_BYTES < limits.BROKER_MAX_PACKET_BYTES
_KEY_ID: Final = r"^[a-f0-9]{16}$"


class EnvelopeError(ValueError):
    """The payload is not a well-formed envelope; the message says which part."""


class Verdict(base.StrEnum):
    NEWER = "NEWER"  # above the highest counter seen: accept
    SAME = "SAME"  # the very document already accepted (a redelivered retained copy)
    REPLAYED = "REPLAYED"  # at or below what was seen, with other content: refuse


class SignedDesiredState(base.Model):
    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["SignedDesiredState"] = "SignedDesiredState"
    thing: Annotated[str, pydantic.Field(pattern=base.THING_NAME)]
    counter: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1, lt=2**63)]
    key_id: Annotated[str, pydantic.Field(pattern=_KEY_ID)]
    algorithm: Literal["Ed25519"] = "Ed25519"
    document: Annotated[str, pydantic.Field(max_length=MAX_DOCUMENT_BYTES * 4 // 3 + 4)]
    signature: Annotated[str, pydantic.Field(min_length=86, max_length=88)]

    def document_bytes(self) -> bytes:
        return _b64decode(self.document, "document")

    def signature_bytes(self) -> bytes:
        raw = _b64decode(self.signature, "signature")
        if len(raw) != 64:
            raise EnvelopeError(f"signature: {len(raw)} bytes, an Ed25519 signature has 64")
        return raw

    def signing_input(self) -> bytes:
        return render_signing_input(self.thing, self.counter, self.key_id,
                                    self.document_bytes())


def _b64decode(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{field}: not base64") from None


def key_id_of(public_key_raw: bytes) -> str:
    """A short, stable name for a public key (the raw 32 Ed25519 bytes)."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def digest_of(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


def render_signing_input(thing: str, counter: int, key_id: str, document: bytes) -> bytes:
    """The exact bytes the controller signs and the device verifies."""
    return _DOMAIN + documents.canonical_json({
        "thing": thing, "counter": counter, "keyId": key_id,
        "sha256": digest_of(document)})


def render_envelope(thing: str, counter: int, key_id: str, document: bytes,
                    signature: bytes) -> bytes:
    """The wire form (canonical JSON); the signature is over render_signing_input()."""
    envelope = SignedDesiredState(
        thing=thing, counter=counter, key_id=key_id,
        document=base64.b64encode(document).decode(),
        signature=base64.b64encode(signature).decode())
    return documents.render_bytes(envelope)


def is_envelope(payload: bytes) -> bool:
    """Cheap sniff, for a clear error on an unsigned document (not a validation)."""
    return b'"kind":"SignedDesiredState"' in payload[:4096] or (
        b'"SignedDesiredState"' in payload[:4096])


def parse_envelope(payload: bytes) -> SignedDesiredState:
    """The envelope in ``payload``, or EnvelopeError naming the problem."""
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"{len(payload)} bytes: a signed document is at most "
                            f"{MAX_ENVELOPE_BYTES}")
    try:
        envelope = SignedDesiredState.model_validate_json(payload)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "envelope"
        if not is_envelope(payload):
            raise EnvelopeError("not signed: the payload is not a SignedDesiredState "
                                "envelope") from None
        raise EnvelopeError(f"{where}: {first['msg']}") from None
    envelope.document_bytes()  # base64 problems are the envelope's, not the signature's
    envelope.signature_bytes()
    return envelope


def resolve_counter(last_issued: int, now_ms: int) -> int:
    """The next counter for a thing: a hybrid logical clock (see the module docstring)."""
    return max(last_issued + 1, now_ms)


def is_newer(counter: int, highest_seen: int) -> bool:
    return counter > highest_seen


def resolve_verdict(counter: int, digest: str, highest_seen: int,
                    seen_digest: str | None) -> Verdict:
    """What the device does with a correctly signed envelope, given what it has seen."""
    if is_newer(counter, highest_seen):
        return Verdict.NEWER
    if counter == highest_seen and digest == seen_digest:
        return Verdict.SAME
    return Verdict.REPLAYED
