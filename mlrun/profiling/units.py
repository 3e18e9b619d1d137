"""Byte units for printed figures."""

MB = 2**20
