"""Encryption at rest of stored backup objects: Google Tink's streaming AEAD (AES256_GCM_HKDF_1MB).

Why Tink: it is a maintained library whose streaming AEAD is a published, segmented format (each 1 MiB segment is
authenticated, the last one is marked, so tampering, reordering and truncation are all detected), and its Python
API is push-based on the write side (``new_encrypting_stream`` returns a writable stream) and pull-based on the
read side, exactly how the storage layer streams: no object is ever held whole in memory, nothing of the format
is hand-written here. (``pyrage``/age is pull-based on both sides, which would need a thread per upload.)

The keyset (JSON, one or more keys: the primary encrypts, all decrypt) lives in ``BackupStorage.encryption_keyset``,
itself encrypted with ``PANEL_ENCRYPTION_KEYS``; it never leaves the panel. Each object's associated data is its
key under the storage, so a stored object swapped for another one fails to decrypt.
"""

from __future__ import annotations

import functools
from typing import BinaryIO

import tink
from tink import secret_key_access, streaming_aead

# Tink's one error type: a ciphertext that does not authenticate, or a failure of the stream underneath.
DecryptionError = tink.TinkError


@functools.cache
def _registered() -> bool:
    streaming_aead.register()
    return True


def new_keyset() -> str:
    """A fresh keyset with one AES256_GCM_HKDF_1MB key, as Tink's JSON."""
    _registered()
    handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
    return str(tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


@functools.lru_cache(maxsize=64)
def _primitive(keyset: str) -> streaming_aead.StreamingAead:
    _registered()
    handle = tink.json_proto_keyset_format.parse(keyset, secret_key_access.TOKEN)
    return handle.primitive(streaming_aead.StreamingAead)


def encrypting_stream(keyset: str, destination: BinaryIO, associated_data: bytes) -> BinaryIO:
    """A writable stream: plaintext written to it reaches ``destination`` encrypted; closing it writes the last
    segment and closes ``destination``."""
    return _primitive(keyset).new_encrypting_stream(destination, associated_data)


def decrypting_stream(keyset: str, source: BinaryIO, associated_data: bytes) -> BinaryIO:
    """A readable stream of the plaintext of ``source``; a read raises ``DecryptionError`` at the first segment
    that does not authenticate (altered, reordered or truncated ciphertext)."""
    return _primitive(keyset).new_decrypting_stream(source, associated_data)
