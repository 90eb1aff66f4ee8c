"""REST API of jobs: status, log lines, cancel."""
