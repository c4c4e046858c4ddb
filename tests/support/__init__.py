"""Test support code shared by Hedgerow's test suites."""
