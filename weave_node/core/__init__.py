"""Types, errors and protocols shared by every layer. Imports only the standard library."""
