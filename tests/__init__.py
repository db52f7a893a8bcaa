"""The test suite, by level: unit/, integration/, ui/ (AppTest), e2e/ (Chromium)."""
