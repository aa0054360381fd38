"""A Hub on loopback for the tests and the benchmarks: the HTTP protocol huggingface_hub speaks, nothing else.

It is not part of the library (the Space and the CLI never import it); it lives beside the tests so that
benchmarks can run real Hub-to-Hub jobs without importing the tests.
"""
