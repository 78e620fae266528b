"""The job `openmaker demo` runs."""
