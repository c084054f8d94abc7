"""Generated from proto/ by tools/genproto.py; never hand-edited."""
