"""identity (to come)."""


def start(work):
    raise RuntimeError("not written yet")
