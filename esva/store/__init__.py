"""Zarr stores for ragged per-clip arrays: decoded media, faces and features share one API."""

from esva.store.ragged import FieldSpec, RaggedReader, RaggedWriter, StoreError, open, verify

__all__ = ["FieldSpec", "RaggedReader", "RaggedWriter", "StoreError", "open", "verify"]
