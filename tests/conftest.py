"""The tests mirror the packages: tests/refimpl, tests/accel, tests/experiments; the CLI and the
architecture checks sit at the top.  This folder is on sys.path (pytest's rootdir conftest), so every test
can import the shared helpers in ``clihelpers``."""
