"""What the tests share besides conftest's fixtures: harnesses (a local Hub, a headless browser, a demo under load,
checkpoints in the Hub's layouts, an FSDP run), apart from the test files.

`tests/` is on sys.path in a test run (conftest puts it there), so these import as `support.NAME`.
"""
