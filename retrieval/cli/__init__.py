"""`python -m retrieval`: the command line, the only place that parses arguments."""
