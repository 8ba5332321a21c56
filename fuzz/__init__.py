"""atheris fuzz harnesses (see ``fuzz/README.md``); importable so tests can replay the corpus."""
