"""The user-facing tools (``python -m allinone_basicsr.tools.<tool>``, or the ``allinone-<tool>`` console scripts)."""
