#!/usr/bin/env python3
"""The test project of the outbox_relay app: its tests (suite/) and the
project the browser test serves. It needs OUTBOX_TEST_DATABASE_URL."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
