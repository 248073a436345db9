"""Clients for systems around the EDM that decom only reads: the directory (LDAP) for now."""
