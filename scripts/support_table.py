#!/usr/bin/env python
"""Print the README's table of which open_clip config families take which long-context text towers.

Read from open_clip.list_models()'s configs alone (open_clip_ext.support); README.md holds this output between
<!-- support-table:start --> and <!-- support-table:end -->, and tests/open_clip_ext/test_support_table.py fails
when the two differ (after an open_clip upgrade, or a change to what the towers accept): paste it again.

    python scripts/support_table.py
"""
import sys

import open_clip_ext  # noqa: F401  (registers this package's configs, which the table lists too)
from open_clip_ext.support import markdown_table

if __name__ == "__main__":
    sys.stdout.write(markdown_table())
