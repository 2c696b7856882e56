"""Result ids: one URL path segment naming a predicted COG, "<job uuid>.<name of the COG within the job>".

The API builds them into links (service.api.links) and the tile layer parses them back (service.tiles.sources):
both read the format from here, so neither depends on the other for it.
"""
from __future__ import annotations

import uuid

from service.errors import NotFoundError

RESULT_SEP = "."
_UUID_LEN = 36


def result_id(job_id, name: str) -> str:
    return f"{job_id}{RESULT_SEP}{name}"


def parse_result_id(rid: str) -> tuple[uuid.UUID, str]:
    """(job id, COG name) of a result id; NotFound for anything malformed (no hint of what exists)."""
    head, sep, name = rid[:_UUID_LEN], rid[_UUID_LEN:_UUID_LEN + 1], rid[_UUID_LEN + 1:]
    try:
        job_id = uuid.UUID(head)
    except ValueError:
        raise NotFoundError(f"no result {rid!r} (result ids are <job id>{RESULT_SEP}<name>)", field="id") from None
    if sep != RESULT_SEP or not name or str(job_id) != head.lower():
        raise NotFoundError(f"no result {rid!r} (result ids are <job id>{RESULT_SEP}<name>)", field="id")
    return job_id, name
