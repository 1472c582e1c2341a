"""Bus message codec: a notice is a multipart ZeroMQ message ``[topic, payload]``.

- ``topic`` is the notice's ``TOPIC`` as UTF-8 (``b"link.peer_up"``); subscribers
  filter on its prefix, so topics are dotted ``area.event`` names.
- ``payload`` is msgpack of a map ``{field name: value}`` built with
  ``dataclasses.fields``; bytes stay msgpack ``bin``, str stays ``str``, so any
  language reads it off the bus.

Rules:
- Decoding is lenient about the shape a newer sender may use: unknown keys are
  dropped, missing keys with a default take the default. Sequences decode as
  tuples (notices are frozen, so their sequence fields are tuples).
- A topic no class is registered for decodes to ``RawNotice(topic, fields)``, so
  ``sporenet bus tap`` and external agents still see notices they do not know.
- Malformed payloads raise only ``DecodeError`` (another process sent them).
- Topics starting with ``_bus.`` are the bus's own (subscription sync); they are
  never decoded into notices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.notices import Notice, notice_class

PRIVATE_PREFIX = b"_bus."


@dataclass(frozen=True, slots=True)
class RawNotice(Notice):
    """A notice whose topic has no registered class here: its topic and raw fields."""

    TOPIC: ClassVar[str] = ""  # not registered: carries its topic per instance
    topic: str
    fields: dict[str, Any]


def notice_fields(notice: Notice) -> dict[str, Any]:
    """The notice's fields as a plain dict (``RawNotice``: its carried fields)."""
    if isinstance(notice, RawNotice):
        return dict(notice.fields)
    return {f.name: getattr(notice, f.name) for f in dataclasses.fields(notice)}


def notice_topic(notice: Notice) -> str:
    return notice.topic if isinstance(notice, RawNotice) else type(notice).TOPIC


def encode_notice(notice: Notice) -> tuple[bytes, bytes]:
    """``notice`` -> ``(topic, payload)`` ready for ``send_multipart``."""
    topic = notice_topic(notice)
    if not topic:
        raise LocalProtocolError(f"{type(notice).__name__} has no TOPIC; it cannot go on the bus")
    if not dataclasses.is_dataclass(notice):
        raise LocalProtocolError(f"{type(notice).__name__} is not a dataclass")
    try:
        payload = msgpack.packb(notice_fields(notice), use_bin_type=True)
    except (TypeError, ValueError) as e:
        raise LocalProtocolError(f"{topic}: a field is not plain data: {e}") from None
    return topic.encode(), payload


def decode_notice(topic: bytes | str, payload: bytes) -> Notice:
    """``(topic, payload)`` -> the registered notice class, else ``RawNotice``."""
    try:
        name = topic.decode() if isinstance(topic, bytes) else topic
    except UnicodeDecodeError:
        raise DecodeError(f"bus topic {topic[:40]!r} is not UTF-8") from None
    try:
        fields = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise DecodeError(f"{name}: payload is not msgpack: {e}") from None
    if not isinstance(fields, dict):
        raise DecodeError(f"{name}: payload is {type(fields).__name__}, expected a map")
    cls = notice_class(name)
    if cls is None:
        return RawNotice(name, fields)
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in fields.items() if k in known})
    except (TypeError, ValueError) as e:  # a required field is missing, or a check refused it
        raise DecodeError(f"{name}: {e}") from None
