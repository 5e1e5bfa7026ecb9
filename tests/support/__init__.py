"""What the tests share besides conftest's fixtures: harnesses (a local Hub, a headless browser, a demo under load,
checkpoints in the Hub's layouts, an FSDP run) and the helpers more than one test file calls. Test files import from
here, never from one another, so each test file can change on its own.

`tests/` is on sys.path in a test run (conftest puts it there), so these import as `support.NAME`.
"""
