"""regcred: one RegistryCredential, a pull secret in every matching namespace."""

__version__ = "0.1.0"
