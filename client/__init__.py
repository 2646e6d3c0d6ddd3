"""The ``mig`` command line; it imports only the generated stubs, the error classes and the path rules."""
