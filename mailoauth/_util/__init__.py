"""The bottom layer: small utilities that every other layer may use.

- :mod:`~mailoauth._util.text`: control characters, refused in what is sent and escaped
  in what is shown (the one injection guard); and the one "looks like a token" test,
  so that a token given in the wrong slot is never echoed;
- :mod:`~mailoauth._util.deprecated`: old keyword spellings kept working with a
  DeprecationWarning;
- :mod:`~mailoauth._util.files`: private directories and atomic writes of small files;
- :mod:`~mailoauth._util.jsonfile`: reading the library's JSON files (token store, poll
  state, CLI profiles, service-account keys) with one set of errors;
- :mod:`~mailoauth._util.lazy`: lazy package attributes (PEP 562) for the package roots;
- :mod:`~mailoauth._util.routing`: the test route table the sandbox sets.

Nothing here imports anything from mailoauth but :mod:`mailoauth.errors`, and nothing
here imports a network library: see docs/architecture.md and the import contract in
pyproject.toml.
"""
