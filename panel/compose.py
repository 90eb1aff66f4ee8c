"""Compose files the panel writes (an environment's override, the proxy's stack), as text compose reads back exactly."""

from __future__ import annotations

import json
import re
from typing import Any

# YAML (go-yaml, which compose uses) refuses C0/C1 control characters, U+FEFF and U+FFFE/U+FFFF in the text, takes
# U+0085, U+2028 and U+2029 as line breaks, and refuses \u escapes of surrogates (JSON's spelling of astral
# characters): so only printable ASCII and astral characters stay as they are, every other one is a \u escape.
YAML_ESCAPE_RE = re.compile("[^\n\x20-\x7e\U00010000-\U0010ffff]")


def compose_file_text(document: dict[str, Any]) -> str:
    """A compose file as JSON (which is YAML) that go-yaml reads back with every string unchanged."""
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
    return YAML_ESCAPE_RE.sub(lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"
