"""Registered by its issue's work; empty until then."""


def register(sub, common) -> None:
    pass
